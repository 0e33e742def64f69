"""``heke-serve`` as a real uvicorn process on 127.0.0.1, called over HTTP with httpx: records
equal heke-run's, every refusal's status and one-line reason, jobs, batching across requests,
backpressure (429), metrics, SIGTERM draining, and no upload left behind."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from heke_runtime.cli import main as heke_run
from heke_runtime.results import read_records
from heke_runtime.tolerances import SERVE_RECORD
from tests.conftest import check_record
from tests.servers import Server, metric, upload
from tests.test_backends import tiny_engine
from tests.videos import corrupt_file, make_audio, make_video

TOKEN = "s3cret-token"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def engine() -> Path:
    return tiny_engine("r2p1d_HEKE_4")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    allowed = folder / "allowed"
    allowed.mkdir()
    make_video(allowed / "a.mp4", frames=30)
    make_video(folder / "b.mkv", frames=36, size=(48, 32))
    make_video(folder / "c.mp4", frames=30, start_frame=7)
    make_video(folder / "outside.mp4", frames=30)
    (folder / "text.mp4").write_text("hello, I am text\n")
    make_audio(folder / "tone.m4a")
    (folder / "big.mp4").write_bytes(os.urandom(700 * 1024))
    (allowed / "escape.mp4").symlink_to(folder / "outside.mp4")
    return folder


def heke_run_records(engine: Path, folder: Path, paths: list[Path], *args: str) -> dict[str, Any]:
    """heke-run's record of each path, by file name."""
    out = folder / f"run{len(list(folder.glob('run*.jsonl')))}.jsonl"
    heke_run([*map(str, paths), "-e", str(engine), "-o", str(out), *args])
    return {Path(r["path"]).name: r for r in read_records(out)}


@pytest.fixture(scope="module")
def expected(engine, clips, tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("expected")
    paths = [clips / "allowed" / "a.mp4", clips / "b.mkv", clips / "c.mp4", clips / "text.mp4"]
    return heke_run_records(engine, folder, [*paths, clips / "tone.m4a"])


@pytest.fixture(scope="module")
def server(engine, clips, tmp_path_factory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("server")
    token = folder / "token"
    token.write_text(TOKEN + "\n")
    args = [
        "--token-file", token, "--allow-path", clips / "allowed", "--max-upload-mb", "0.5",
        "--max-batch", "8", "--batch-delay-ms", "400", "--decode-workers", "2",
    ]  # fmt: skip
    running = Server(engine, *args, tmp=folder / "tmp")
    yield running
    assert running.temp_files() == []  # after every test of the module, failed ones included
    assert running.stop() == 0, running.log()
    assert running.upload_folders() == []


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with server.client(TOKEN) as c:
        yield c


def assert_same_record(got: dict[str, Any], want: dict[str, Any], where: str = "") -> None:
    """Equal records but for elapsed time (and the path, which the caller checks)."""
    check_record(got)
    # Warnings name the input as each side was given it (a path, or the uploaded file's name).
    want = {**want, "warnings": [w.replace(want["path"], got["path"]) for w in want["warnings"]]}
    keys = set(got) | set(want)
    for key in keys - {"path", "elapsed_s"}:
        assert_same(got.get(key), want.get(key), f"{where}{key}")


def assert_same(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert math.isclose(got, want, abs_tol=SERVE_RECORD.atol), f"{where}: {got} != {want}"
    else:
        assert got == want, where


# --------------------------------------------------------------------------- records


def test_an_upload_gets_exactly_the_record_heke_run_writes(client, clips, expected):
    for path in (clips / "allowed" / "a.mp4", clips / "b.mkv"):
        response = upload(client, path)
        assert response.status_code == 200, response.text
        record = response.json()
        assert record["path"] == path.name  # the client's name, never the temporary file
        assert record["status"] == "ok" and len(record["snippets"]) == 12
        assert_same_record(record, expected[path.name], f"{path.name}: ")


def test_snippets_10_is_heke_run_snippets_10(client, engine, clips, tmp_path):
    path = clips / "c.mp4"
    want = heke_run_records(engine, tmp_path, [path], "--snippets", "10")["c.mp4"]
    response = upload(client, path, snippets=10)
    assert response.status_code == 200, response.text
    record = response.json()
    assert len(record["snippets"]) == 10 and record["sampling"]["num_snippets"] == 10
    assert_same_record(record, want)


def test_a_server_side_path_under_allow_path_is_scored(client, clips, expected):
    given = str(clips / "allowed" / "a.mp4")
    response = client.post("/v1/score", json={"path": given})
    assert response.status_code == 200, response.text
    assert response.json()["path"] == given
    assert_same_record(response.json(), expected["a.mp4"])


def test_concurrent_requests_share_engine_calls_and_keep_their_records(server, clips, expected):
    """Two 12-snippet videos with --max-batch 8: alone they take 4 calls (8+4, 8+4); together
    the window lets the first one's last 4 snippets ride with the second one's first 4."""
    with server.client(TOKEN) as c:
        before = metric(c.get("/metrics").text, "heke_batch_videos_count")
        shared_before = _shared_batches(c.get("/metrics").text)
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(lambda p: upload(c, p), [clips / "allowed" / "a.mp4", clips / "c.mp4"])
            )
        text = c.get("/metrics").text
    for response, name in zip(answers, ["a.mp4", "c.mp4"]):
        assert response.status_code == 200, response.text
        assert_same_record(response.json(), expected[name], f"{name}: ")
    assert _shared_batches(text) > shared_before
    assert metric(text, "heke_batch_videos_count") - before < 4


def _shared_batches(text: str) -> float:
    """Engine calls that held snippets of more than one video."""
    return metric(text, "heke_batch_videos_count") - metric(
        text, "heke_batch_videos_bucket", ['le="1.0"']
    )


@pytest.mark.parametrize(
    ("option", "clip"),
    [(["--on-damage", "conceal"], "damaged.mp4"), (["--timeout", "1e-6"], "a.mp4")],
    ids=["on-damage", "timeout"],
)
def test_decode_options_reach_the_decoder(engine, clips, tmp_path, option, clip):
    """The record of a server started with a decode option is heke-run's with that option."""
    path = clips / clip if clip == "damaged.mp4" else clips / "allowed" / clip
    if clip == "damaged.mp4":
        clean = make_video(tmp_path / "clean.mp4", frames=100)
        path = corrupt_file(clean, tmp_path / clip, length=50)  # concealed: tests/test_damage.py
    want = heke_run_records(engine, tmp_path, [path], *option, "--workers", "1")[clip]
    server = Server(engine, *option, tmp=tmp_path / "tmp")
    try:
        with server.client() as c:
            response = upload(c, path)
            ready = c.get("/readyz").json()
    finally:
        assert server.stop() == 0, server.log()
    assert response.status_code == (200 if want["status"] == "ok" else 422), response.text
    got = response.json() if response.status_code == 200 else response.json()["record"]
    assert_same_record(got, want)
    changed = "concealed damage" in " ".join(want["warnings"]) or "--timeout" in want["error"]
    assert changed  # the option made a difference heke-run's default would not
    # The defaults: a decoding thread per core, 4 videos in progress per thread, the
    # backend's batch (1 on CPU).
    cores = len(os.sched_getaffinity(0))
    assert (ready["decode_workers"], ready["max_queue"], ready["max_batch"]) == (
        cores,
        4 * cores,
        1,
    )


def test_an_engine_that_does_not_load_keeps_the_server_up_saying_why(engine, clips, tmp_path):
    """The sidecar matches, but ONNX Runtime cannot load the graph (here: cut short): the
    process stays alive, /readyz and /v1/score answer 503 with the reason, nothing crashes."""
    broken = engine_from(engine, engine.read_bytes()[:5000], tmp_path / "broken.onnx")
    server = Server(broken, tmp=tmp_path / "tmp", ready=False)
    try:
        with server.client() as c:
            _wait_for(lambda: "loading" not in c.get("/readyz").text)
            ready = c.get("/readyz")
            answer = upload(c, clips / "allowed" / "a.mp4")
            assert c.get("/healthz").status_code == 200
    finally:
        assert server.stop() == 0, server.log()
    reason = ready.json()["error"]
    assert ready.status_code == 503 and reason and "\n" not in reason
    assert (answer.status_code, answer.json()["error"]) == (503, reason)
    assert answer.headers["retry-after"] == "1"


def engine_from(engine: Path, graph: bytes, dest: Path) -> Path:
    """``graph`` written at ``dest`` with ``engine``'s sidecar, its hashes made to match."""
    dest.write_bytes(graph)
    sidecar = json.loads(Path(f"{engine}.json").read_text())
    digest = hashlib.sha256(graph).hexdigest()
    sidecar |= {"artifact_sha256": digest, "onnx_sha256": digest}
    Path(f"{dest}.json").write_text(json.dumps(sidecar))
    return dest


def nan_when_dark(engine: Path, dest: Path) -> Path:
    """``engine`` with ``0 * sqrt(mean(clip) + 1)`` added to each snippet's features: the same
    numbers for a clip whose normalized mean is above -1, NaN for a dark one (a black frame's
    is about -2). An engine that fails on some videos only, as a real one does on inputs it
    was never built for."""
    import onnx
    from onnx import helper

    model = onnx.load(str(engine))
    graph = model.graph
    last = next(node for node in graph.node if "features" in node.output)
    last.output[list(last.output).index("features")] = "features_before"
    constants = {"axes": [1, 2, 3, 4], "one": [1.0], "zero": [0.0], "column": [1]}
    for name, values in constants.items():
        kind = onnx.TensorProto.FLOAT if isinstance(values[0], float) else onnx.TensorProto.INT64
        graph.initializer.append(helper.make_tensor(f"dark_{name}", kind, [len(values)], values))
    graph.node.extend([
        helper.make_node("ReduceMean", ["clips", "dark_axes"], ["dark_mean"], keepdims=0),
        helper.make_node("Add", ["dark_mean", "dark_one"], ["dark_shifted"]),
        helper.make_node("Sqrt", ["dark_shifted"], ["dark_root"]),  # NaN below -1
        helper.make_node("Mul", ["dark_root", "dark_zero"], ["dark_nothing"]),
        helper.make_node("Unsqueeze", ["dark_nothing", "dark_column"], ["dark_column_of"]),
        helper.make_node("Add", ["features_before", "dark_column_of"], ["features"]),
    ])  # fmt: skip
    onnx.checker.check_model(model)
    return engine_from(engine, model.SerializeToString(), dest)


def test_an_engine_failing_on_one_video_is_500_for_it_alone(engine, clips, tmp_path):
    """The engine gives NaN for a dark video that shares its engine calls with a bright one:
    the dark one is 500 with heke-run's reason and error record, the other is scored, and
    the server goes on."""
    nan_engine = nan_when_dark(engine, tmp_path / "nan-when-dark.onnx")
    dark = make_video(tmp_path / "dark.mp4", frames=30, gain=0.05)
    bright = clips / "allowed" / "a.mp4"
    want = heke_run_records(nan_engine, tmp_path, [dark, bright])
    assert "NaN/Inf" in want["dark.mp4"]["error"] and want["a.mp4"]["status"] == "ok"
    server = Server(nan_engine, "--max-batch", "8", "--batch-delay-ms", "400", tmp=tmp_path / "t")
    try:
        with server.client() as c, ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda p: upload(c, p), [dark, bright]))
            text = c.get("/metrics").text
            again = upload(c, bright)
    finally:
        assert server.stop() == 0, server.log()
    failed, scored = answers
    assert failed.status_code == 500, failed.text
    assert failed.json()["error"] == f"dark.mp4: {want['dark.mp4']['error']}"
    assert_same_record(failed.json()["record"], want["dark.mp4"])
    for response in (scored, again):
        assert response.status_code == 200, response.text
        assert_same_record(response.json(), want["a.mp4"])
    assert _shared_batches(text) >= 1  # the NaN rows rode with the bright video's
    assert metric(text, "heke_videos_scored_total") == 1


# --------------------------------------------------------------------------- refusals


def test_not_a_video_or_no_video_stream_is_422_with_heke_runs_reason(client, clips, expected):
    for name in ("text.mp4", "tone.m4a"):
        response = upload(client, clips / name)
        assert response.status_code == 422, response.text
        body = response.json()
        want = expected[name]["error"]
        assert want and body["error"] == f"{name}: {want}"
        assert body["record"]["status"] == "error" and body["record"]["error"] == want
        assert "heke-serve-" not in body["error"]  # no temporary path leaks out
    assert "no video stream" in expected["tone.m4a"]["error"]


def test_missing_field_bad_query_and_bad_json_are_422(client, clips):
    for field in ("file", "videos"):  # named before and after 'video': neither is it
        with open(clips / "allowed" / "a.mp4", "rb") as handle:
            response = client.post("/v1/score", files={field: ("a.mp4", handle)})
        assert response.status_code == 422, field
        assert response.json() == {"error": "the multipart upload has no 'video' field"}
    response = upload(client, clips / "allowed" / "a.mp4", snippets=11)
    assert (response.status_code, response.json()["error"]) == (
        422,
        "snippets must be 10 or 12, got 11",
    )
    assert upload(client, clips / "allowed" / "a.mp4", snippets="ten").status_code == 422
    twelve = upload(client, clips / "allowed" / "a.mp4", snippets=12)
    assert twelve.status_code == 200 and len(twelve.json()["snippets"]) == 12
    broken = client.post(  # a part header that never ends
        "/v1/score",
        content=b"--B\r\n" + b"X" * 10000,
        headers={"content-type": "multipart/form-data; boundary=B"},
    )
    assert broken.status_code == 422 and broken.json()["error"].startswith("malformed multipart")
    for kind in (
        "text/plain",
        *(f"multipart/{sub}; boundary=B" for sub in ("mixed", "alternative")),
    ):
        plain = client.post("/v1/score", content=b"--B--\r\n", headers={"content-type": kind})
        assert (plain.status_code, plain.json()["error"]) == (
            422,
            "expected a multipart upload with a 'video' field",
        ), kind
    bad = client.post("/v1/score", content=b"{", headers={"content-type": "application/json"})
    assert bad.status_code == 422 and "JSON body does not parse" in bad.json()["error"]
    assert client.post("/v1/score", json={"file": "a.mp4"}).status_code == 422


def test_an_upload_over_the_limit_is_413_declared_or_streamed(client, clips):
    response = upload(client, clips / "big.mp4")
    assert response.status_code == 413
    assert response.json()["error"] == "upload larger than the server's limit of 0.5 MB"
    data = (clips / "big.mp4").read_bytes()
    streamed = client.post(  # chunked: no Content-Length to refuse it early
        "/v1/score",
        content=_multipart_chunks("big.mp4", data, threading.Event(), wait=False),
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert streamed.status_code == 413
    limit = 2**19  # --max-upload-mb 0.5: a file of exactly that many bytes is taken
    for size, status in ((limit, 422), (limit + 1, 413)):
        exact = client.post(
            "/v1/score",
            content=_multipart_chunks("noise.mp4", data[:size], threading.Event(), wait=False),
            headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert exact.status_code == status, (size, exact.text)


def test_a_declared_oversize_upload_is_413_before_its_body_is_sent(server):
    # Only the headers go out: a server that waited for the body would never answer.
    host, port = server.url.removeprefix("http://").split(":")
    declared = 2**19 + 64 * 1024 + 1  # the limit plus the form overhead it allows, plus one
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(head.encode())
        answer = connection.makefile("rb")
        status = answer.readline().decode()
        headers = dict(
            line.decode().strip().lower().split(": ", 1) for line in iter(answer.readline, b"\r\n")
        )
        body = json.loads(answer.read(int(headers["content-length"])))
    assert status.startswith("HTTP/1.1 413"), status
    assert body["error"] == "upload larger than the server's limit of 0.5 MB"


def test_a_body_over_the_limit_by_its_form_fields_only_is_taken(client, clips):
    # The limit is the video's: a file within it, sent with other fields, is read and judged
    # (not a video: 422), however the body's total compares with the limit.
    noise = os.urandom(2**19 - 100)
    response = client.post(
        "/v1/score",
        files={"video": ("noise.mp4", noise)},
        data={"note": "x" * 4000},
    )
    assert response.status_code == 422, response.text
    assert "noise.mp4" in response.json()["error"]


def test_of_two_video_parts_the_first_is_scored(client, clips, expected):
    first, second = clips / "allowed" / "a.mp4", clips / "c.mp4"
    parts = [("video", (p.name, p.read_bytes())) for p in (first, second)]
    response = client.post("/v1/score", files=parts)
    assert response.status_code == 200, response.text
    assert_same_record(response.json(), expected[first.name], "first part: ")


def test_a_part_with_more_headers_is_still_the_video(client, clips, expected):
    # RFC 2045's Content-Description, after Content-Disposition: only that one names the part.
    clip = clips / "allowed" / "a.mp4"
    part = (clip.name, clip.read_bytes(), "video/mp4", {"Content-Description": "a clip"})
    response = client.post("/v1/score", files={"video": part})
    assert response.status_code == 200, response.text
    assert_same_record(response.json(), expected[clip.name])


def test_a_missing_or_wrong_token_is_401_and_probes_need_none(server, clips):
    for token in (None, "wrong"):
        with server.client(token) as c:
            response = upload(c, clips / "allowed" / "a.mp4")
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert "bearer token" in response.json()["error"]
            assert c.get("/v1/jobs/anything").status_code == 401
            for route in ("/healthz", "/readyz", "/metrics", "/", "/docs"):
                assert c.get(route).status_code == 200, route


def test_paths_outside_allow_path_are_403_symlinks_and_dotdot_included(client, clips):
    allowed = clips / "allowed"
    for given in (
        clips / "outside.mp4",
        allowed / "escape.mp4",  # a symlink inside that points outside
        f"{allowed}/../outside.mp4",
        "https://example.com/a.mp4",
    ):
        response = client.post("/v1/score", json={"path": str(given)})
        assert response.status_code == 403, given
        assert response.json()["error"].startswith(f"{given}: ")


def test_unknown_job_is_404(client):
    response = client.get("/v1/jobs/no-such-job")
    assert response.status_code == 404
    assert response.json()["error"].startswith("no job no-such-job")


# --------------------------------------------------------------------------- jobs


def test_jobs_answer_202_then_the_record_or_the_reason(client, clips, expected):
    good = upload(client, clips / "b.mkv", route="/v1/jobs")
    bad = upload(client, clips / "text.mp4", route="/v1/jobs")
    assert good.status_code == bad.status_code == 202
    assert good.headers["location"] == good.json()["url"] == f"/v1/jobs/{good.json()['id']}"
    done = _wait_job(client, good.json()["id"])
    assert done["status"] == "done" and done["http_status"] == 200 and done["input"] == "b.mkv"
    assert_same_record(done["record"], expected["b.mkv"])
    failed = _wait_job(client, bad.json()["id"])
    assert failed["status"] == "failed" and failed["http_status"] == 422
    assert failed["error"] == f"text.mp4: {expected['text.mp4']['error']}"


def _wait_job(client: httpx.Client, job_id: str, limit_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        view = client.get(f"/v1/jobs/{job_id}").json()
        if view["status"] in ("done", "failed"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {view['status']} after {limit_s} s")


# --------------------------------------------------------------------------- probes, metrics


def test_probes_metrics_and_api_docs(client):
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "r2p1d_HEKE_4"
    assert ready["max_batch"] == 8 and "CPUExecutionProvider" in ready["device"]
    text = client.get("/metrics").text
    assert metric(text, "heke_requests_total", ['route="/v1/score"', 'code="200"']) >= 1
    assert metric(text, "heke_videos_scored_total") >= 1
    assert metric(text, "heke_decode_failures_total") >= 1
    assert metric(text, "heke_queue_depth") == 0
    assert metric(text, "heke_request_latency_seconds_count", ['route="/v1/score"']) >= 1
    assert metric(text, "heke_batch_size_count") >= 1
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)


def test_no_upload_is_left_behind(server, client):
    assert len(server.upload_folders()) == 1
    assert server.temp_files() == []


# --------------------------------------------------------------------------- backpressure, drain

BOUNDARY = "heke-test-boundary"


def _multipart_chunks(name: str, data: bytes, gate: threading.Event, wait: bool = True):
    """A multipart body sent in pieces: the head, then (once ``gate`` opens) the file."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    if wait:
        assert gate.wait(120), "the test never opened the gate"
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_a_full_queue_is_429_and_sigterm_drains_then_exits_0(engine, clips, expected, tmp_path):
    """With --max-queue 1, a slow upload holds the only slot: the next request is refused
    (429, Retry-After). SIGTERM then refuses new requests (503) while the slow one finishes
    with its full record, and the process exits 0 with no temporary file left."""
    server = Server(engine, "--max-queue", "1", "--decode-workers", "1", tmp=tmp_path / "tmp")
    gate = threading.Event()
    data = (clips / "allowed" / "a.mp4").read_bytes()
    pool = ThreadPoolExecutor(1)
    try:
        with server.client() as c:
            slow = pool.submit(
                c.post,
                "/v1/score",
                content=_multipart_chunks("a.mp4", data, gate),
                headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
            )
            _wait_for(lambda: metric(c.get("/metrics").text, "heke_queue_depth") == 1)
            busy = upload(c, clips / "b.mkv")
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"].startswith("server busy: 1 videos in progress")
            server.proc.send_signal(signal.SIGTERM)
            _wait_for(lambda: c.get("/readyz").status_code == 503)
            refused = upload(c, clips / "b.mkv")
            assert refused.status_code == 503
            assert refused.json() == {"error": "the server is shutting down"}
            assert server.proc.poll() is None  # the slow request still holds it up
            gate.set()
            answer = slow.result(timeout=120)
        assert answer.status_code == 200, answer.text
        assert_same_record(answer.json(), expected["a.mp4"])
        assert server.proc.wait(60) == 0, server.log()
        assert "SIGTERM: finishing work in flight" in server.log()
        assert server.upload_folders() == []  # removed on the way out
    finally:
        gate.set()  # first: a failed assert must not leave the slow upload waiting
        pool.shutdown()
        server.stop(signal.SIGKILL)


def test_a_stalled_upload_delays_no_other_request(server, clips, expected):
    """A client that stops sending mid-upload holds its own slot, nothing else: another
    video is scored meanwhile, and the stalled one still gets its record when it resumes."""
    gate = threading.Event()
    data = (clips / "b.mkv").read_bytes()
    pool = ThreadPoolExecutor(1)
    try:
        with server.client(TOKEN) as c:
            depth = metric(c.get("/metrics").text, "heke_queue_depth")
            stalled = pool.submit(
                c.post,
                "/v1/score",
                content=_multipart_chunks("b.mkv", data, gate),
                headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
            )
            _wait_for(lambda: metric(c.get("/metrics").text, "heke_queue_depth") == depth + 1)
            other = upload(c, clips / "allowed" / "a.mp4")
            assert other.status_code == 200 and not stalled.done()
            assert_same_record(other.json(), expected["a.mp4"])
            gate.set()
            answer = stalled.result(timeout=120)
        assert answer.status_code == 200, answer.text
        assert_same_record(answer.json(), expected["b.mkv"])
    finally:
        gate.set()
        pool.shutdown()


def _wait_for(condition, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


# --------------------------------------------------------------------------- the batcher


def test_the_batcher_equals_one_video_at_a_time_on_onnx_runtime(engine):
    """DynamicBatcher on a real ONNX Runtime session: videos of two shapes, submitted
    together, come back each with its own rows, equal to running the video alone."""
    from heke_runtime.backends import open_backend
    from heke_serve.batching import DynamicBatcher

    rng = np.random.default_rng(0)
    videos = [rng.normal(size=(n, 3, 8, h, w)).astype(np.float32) for n, h, w in
              [(5, 32, 32), (3, 32, 32), (4, 24, 40), (2, 32, 32)]]  # fmt: skip
    sizes: list[tuple[int, int]] = []
    with open_backend(engine, "onnxruntime") as backend:
        alone = [backend.infer({"clips": v}) for v in videos]
        batcher = DynamicBatcher(backend.infer, 4, 0.2, lambda s, v: sizes.append((s, v)))
        futures = [batcher.submit({"clips": v}) for v in videos]
        together = [f.result(timeout=60) for f in futures]
        batcher.close()
    for got, want in zip(together, alone):
        for name in ("heads", "features"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    assert all(s <= 4 for s, _ in sizes) and sum(s for s, _ in sizes) == 14
    assert any(v > 1 for _, v in sizes)  # at least one call held two videos' snippets


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """Seconds of decoding on one worker: a job still at work when SIGTERM comes."""
    folder = tmp_path_factory.mktemp("long")
    return make_video(folder / "long.mp4", size=(1280, 720), frames=300)


@pytest.mark.parametrize(("drain_s", "gives_up"), [("120", False), ("0", True)])
def test_sigterm_waits_for_a_job_in_flight_up_to_drain_timeout(
    engine, long_video, tmp_path, drain_s, gives_up
):
    server = Server(engine, "--decode-workers", "1", "--drain-timeout", drain_s, tmp=tmp_path)
    try:
        with server.client() as c:
            job = upload(c, long_video, route="/v1/jobs").json()["id"]
            assert c.get(f"/v1/jobs/{job}").json()["status"] != "done"
            server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(150) == 0, server.log()
    finally:
        server.stop(signal.SIGKILL)
    gave_up = "gave up waiting for 1 requests or jobs" in server.log()
    assert gave_up == gives_up, server.log()


def test_sigterm_gives_up_on_a_job_that_outlasts_drain_timeout(engine, tmp_path):
    """A job on a FIFO nobody writes decodes until its --timeout (6 s): SIGTERM with
    --drain-timeout 2 gives up on it after 2 s, says so, and exits 0."""
    folder = tmp_path / "allowed"
    folder.mkdir()
    fifo = folder / "never.mkv"
    os.mkfifo(fifo)
    args = ["--allow-path", folder, "--drain-timeout", "2", "--timeout", "6"]
    server = Server(engine, *args, tmp=tmp_path / "tmp")
    try:
        with server.client() as c:
            job = c.post("/v1/jobs", json={"path": str(fifo)}).json()["id"]
            assert c.get(f"/v1/jobs/{job}").json()["status"] != "done"
            server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0, server.log()
    finally:
        server.stop(signal.SIGKILL)
    assert "gave up waiting for 1 requests or jobs" in server.log()
