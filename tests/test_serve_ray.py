"""``heke-serve --ray`` on a real multi-node Ray cluster in this machine (Ray's ``Cluster``: a
head with no CPUs and two one-CPU worker nodes, one scoring replica on each), called over
HTTP through Serve's proxy: records equal heke-run's, requests spread over the replicas, and
a replica killed while jobs are in flight loses none of them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="needs Ray Serve (pip install heke[serve-ray])")
serve = pytest.importorskip("ray.serve", reason="needs Ray Serve (pip install heke[serve-ray])")
httpx = pytest.importorskip("httpx")

from heke_runtime.cli import main as heke_run  # noqa: E402
from heke_runtime.results import read_records  # noqa: E402
from heke_serve import ray_serve  # noqa: E402
from heke_serve.app import ServeOptions  # noqa: E402
from heke_serve.cli import main as heke_serve  # noqa: E402
from heke_serve.service import ServiceLimits  # noqa: E402
from tests.clusters import local_cluster  # noqa: E402
from tests.test_backends import random_regressor, tiny_engine  # noqa: E402
from tests.videos import make_video  # noqa: E402

WORKERS = 2  # nodes, one scoring replica each
SCORE_TOLERANCE = 1e-6  # the same engine on the same tensors: only float printing differs
WAIT_S = 180.0  # bound on every wait for the cluster (2-core CI machine)
SIZES = [(64, 48), (96, 54), (48, 32)]  # two or more input shapes share the replicas
KILL_ROUNDS = 3  # rounds of "post, kill the busiest replica" until one holds a video
LIMITS = ServiceLimits(max_batch=2, batch_delay_s=0.005, decode_workers=1, max_queue=8)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def engine() -> Path:
    return tiny_engine("r2p1d_HEKE_4").resolve()


@pytest.fixture(scope="module")
def regressor(tmp_path_factory) -> Path:
    return random_regressor(tmp_path_factory.mktemp("regressor") / "reg.npz").resolve()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    """Six small videos of three sizes, and a file that is no video."""
    folder = tmp_path_factory.mktemp("videos")
    made = [
        make_video(folder / f"v{i}.mp4", size=SIZES[i % len(SIZES)], frames=30) for i in range(6)
    ]
    junk = folder / "junk.mp4"
    junk.write_bytes(b"not a video" * 300)
    return [*made, junk]


@pytest.fixture(scope="module")
def reference(engine, regressor, videos, tmp_path_factory) -> dict[str, dict]:
    """heke-run's records, by file name, with the replicas' engine threads (ONNX Runtime's
    float sums depend on them)."""
    out = tmp_path_factory.mktemp("reference") / "out.jsonl"
    argv = [*map(str, videos), "-e", str(engine), "--regressor", str(regressor)]
    assert heke_run([*argv, "--threads", "1", "-o", str(out)]) == 1  # 1: junk.mp4 failed
    return {Path(r["path"]).name: r for r in read_records(out)}


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(WORKERS) as local:
        try:
            yield local
        finally:
            serve.shutdown()  # before Ray goes: Serve's controller and proxy are its actors


@pytest.fixture(scope="module")
def base_url(cluster, engine, regressor) -> str:
    """The application on the cluster, ready, and the address of Serve's HTTP proxy."""
    settings = ray_serve.ScorerSettings(str(engine), LIMITS, str(regressor), threads=1)
    port = ray_serve.free_port("127.0.0.1")
    ray_serve.deploy(
        settings, ServeOptions(), ray_serve.RayOptions(replicas=WORKERS), "127.0.0.1", port
    )
    url = f"http://127.0.0.1:{port}"
    until(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, "never ready")
    return url


# --------------------------------------------------------------------------- helpers


def until(condition, message: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def assert_same_record(got: dict, want: dict, name: str) -> None:
    """Equal records but the path (the client's file name) and timing, scores within
    SCORE_TOLERANCE."""
    assert got["path"] == name
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key in ("path", "elapsed_s"):
            continue
        if key in ("scores", "spread"):
            assert got[key] == pytest.approx(value, abs=SCORE_TOLERANCE), key
        elif key == "snippets":
            assert len(got[key]) == len(value)
            for mine, theirs in zip(got[key], value):
                assert mine == pytest.approx(theirs, abs=SCORE_TOLERANCE)
        elif key == "error" and value is not None:  # heke-run's names its input's path
            assert got[key] == value.replace(want["path"], name)
        else:
            assert got[key] == value, key


def post(client: httpx.Client, route: str, video: Path) -> httpx.Response:
    return client.post(route, files={"video": (video.name, video.read_bytes())})


def readyz(url: str) -> dict:
    answer = httpx.get(f"{url}/readyz", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def scorer_replicas() -> list[str]:
    """Names of the scoring replicas' actors now alive (Serve names every replica actor)."""
    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if ray_serve.SCORER in actor["name"] and actor["namespace"] == "serve"
    ]


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_records_equal_heke_runs_and_spread_over_replicas(base_url, videos, reference):
    with httpx.Client(base_url=base_url, timeout=WAIT_S) as client, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda v: post(client, "/v1/score", v), videos * 2))
    for video, answer in zip(videos * 2, answers):
        want = reference[video.name]
        if want["status"] == "ok":
            assert answer.status_code == 200, answer.text
            assert_same_record(answer.json(), want, video.name)
        else:  # heke-serve's refusal of a file that is no video, with heke-run's record
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"].startswith(f"{video.name}: ")
            assert_same_record(answer.json()["record"], want, video.name)
    ready = readyz(base_url)
    by_replica = ready["videos_by_replica"]
    assert sum(by_replica.values()) == len(answers)
    assert len(by_replica) == WORKERS, by_replica  # every replica scored some
    assert len({key.split("@")[1] for key in by_replica}) == WORKERS  # on different nodes
    assert ready["retried"] == 0 and ready["replicas"] == WORKERS
    assert ready["engine"] == str(reference["v0.mp4"]["engine"]["path"])


@pytest.mark.slow
def test_a_replica_killed_mid_run_loses_no_accepted_job(base_url, engine, regressor, tmp_path):
    # Videos long enough (about half a second each on one CPU) that the jobs are still at
    # work when the last is accepted; small ones could all be done by then.
    longer = [
        make_video(tmp_path / f"long{i}.mp4", size=(640, 360), frames=150 + i) for i in range(2)
    ]
    out = tmp_path / "reference.jsonl"
    argv = [*map(str, longer), "-e", str(engine), "--regressor", str(regressor)]
    assert heke_run([*argv, "--threads", "1", "-o", str(out)]) == 0
    reference = {Path(r["path"]).name: r for r in read_records(out)}
    # As many jobs as the ingress admits (--max-queue per replica, times the replicas). The
    # replica killed is the one holding the most of them at that moment, as Serve's own count
    # says; if none holds any yet (the router still has them all), the round kills nothing
    # and the next one posts again.
    # Who sends the killed replica's videos again is not asserted: the ingress does (its
    # "retried" count) for a request the replica had taken, Serve's router itself for one
    # still queued there; on the loaded CI machine all were of the second kind.
    inputs = (longer * 8)[: readyz(base_url)["max_queue"]]
    for _ in range(KILL_ROUNDS):
        if kill_the_busiest_replica_under_load(base_url, inputs, reference):
            break
    else:
        pytest.fail(f"in {KILL_ROUNDS} rounds no replica held a video when the jobs were posted")


def ongoing(name: str) -> int:
    """Requests the Serve replica ``name`` holds now (Serve's own count, from its actor)."""
    actor = ray.get_actor(name, namespace="serve")
    return int(ray.get(actor.get_num_ongoing_requests.remote(), timeout=WAIT_S))


def kill_the_busiest_replica_under_load(base_url: str, inputs: list[Path], reference: dict) -> int:
    """Posts ``inputs`` as jobs, kills the scoring replica holding the most of them (if any
    holds one), and checks every job is scored as heke-run scores it. Returns how many
    requests the killed replica held (0: none was killed)."""
    until(lambda: len(scorer_replicas()) == WORKERS, "Serve did not replace the replica")
    names = scorer_replicas()  # now: Ray's state API takes a while, the jobs do not wait
    with httpx.Client(base_url=base_url, timeout=WAIT_S) as client:
        accepted = []
        for video in inputs:
            answer = post(client, "/v1/jobs", video)
            assert answer.status_code == 202, answer.text
            accepted.append((answer.json()["id"], video))

        def statuses() -> list[str]:
            return [client.get(f"/v1/jobs/{job}").json()["status"] for job, _ in accepted]

        held = {name: ongoing(name) for name in names}
        victim = max(held, key=lambda name: held[name])
        if held[victim]:
            ray.kill(ray.get_actor(victim, namespace="serve"))
        until(lambda: all(s in ("done", "failed") for s in statuses()), "jobs stuck")
        # One replica died: every video it held went to the other, so all are scored (a
        # second loss would fail a job with its reason and 503, never drop it).
        for job, video in accepted:
            view = client.get(f"/v1/jobs/{job}").json()
            assert view["status"] == "done", view
            assert_same_record(view["record"], reference[video.name], video.name)
    if held[victim]:
        until(lambda: victim not in scorer_replicas(), "the killed replica is still named")
    return held[victim]


@pytest.mark.slow
@pytest.mark.timeout(300)  # a command that never says it listens ends the test
def test_the_cli_serves_on_a_cluster_and_drains_on_sigterm(
    cluster, base_url, engine, regressor, videos, reference
):
    # Last: the command removes the application when it stops. Serve keeps its proxy's port,
    # so the command is given the same one. Its record is heke-run's, regressor included.
    serve.delete(ray_serve.APP_NAME)
    port = base_url.rsplit(":", 1)[1]
    command = [
        sys.executable, "-m", "heke_serve.cli", "-e", str(engine), "--ray", "--replicas", "1",
        "--ray-address", cluster.address, "--port", port, "--regressor", str(regressor),
        "--threads", "1",
    ]  # fmt: skip
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        lines = iter(server.stderr.readline, "")  # Ray's own log lines come too
        line = next((x for x in lines if x.startswith("heke-serve: listening")), "")
        assert f"on http://127.0.0.1:{port} " in line and "1 scoring replicas" in line, line
        with httpx.Client(base_url=base_url, timeout=WAIT_S) as client:
            ready = client.get("/readyz").json()
            assert ready["replicas"] == 1 and ready["decode_workers"] == 1  # --ray's default
            answer = post(client, "/v1/score", videos[0])
            assert answer.status_code == 200, answer.text
            assert_same_record(answer.json(), reference[videos[0].name], videos[0].name)
        server.send_signal(signal.SIGTERM)
        assert server.wait(WAIT_S) == 0
        assert "SIGTERM: finishing work in flight" in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert ray_serve.APP_NAME not in serve.status().applications


def test_ray_without_ray_serve_names_the_extra(monkeypatch, capsys, tmp_path):
    engine = tmp_path / "model.onnx"
    engine.write_bytes(b"")

    def missing():
        raise ray_serve.RayServeMissingError(
            f"--ray needs Ray Serve (No module named 'ray'); install it with "
            f"{ray_serve.SERVE_RAY_EXTRA}"
        )

    monkeypatch.setattr(ray_serve, "require_ray_serve", missing)
    assert heke_serve(["-e", str(engine), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'heke[serve-ray]'" in err
