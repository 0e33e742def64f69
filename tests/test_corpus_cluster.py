"""``heke-corpus`` on a real multi-node Ray cluster in this machine (Ray's ``Cluster``: a
head with no CPUs and three one-CPU worker nodes): record-by-record equality with the
single-machine Scorer, a killed actor and a lost node mid-run, and a killed driver resumed.

The corpus: 50 generated videos (several codecs and sizes) plus broken files, listed in a
CSV manifest with relative and absolute paths, some explicit ids and some labels.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the corpus tests need Ray Data (pip install heke[ray])")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
from ray.cluster_utils import Cluster  # noqa: E402

from heke_corpus import store  # noqa: E402
from heke_corpus.pipeline import MAX_ABANDONED  # noqa: E402
from heke_corpus.run import CorpusOptions, CorpusUsageError, read_manifest, run_corpus  # noqa: E402
from heke_runtime.pipeline import timeout_reason  # noqa: E402
from heke_runtime.scorer import Scorer  # noqa: E402
from tests.clusters import descendants, local_cluster, processes  # noqa: E402
from tests.test_backends import random_regressor, tiny_engine  # noqa: E402
from tests.videos import corrupt_file, make_audio, make_video, truncate_file  # noqa: E402

pytestmark = pytest.mark.slow

WORKERS = 3
SCORE_TOLERANCE = 1e-6  # the same engine on the same tensors: only float printing differs
SHAPES: list[tuple[str, dict[str, Any]]] = [
    ("mp4", {"codec": "libx264", "size": (64, 48), "frames": 30}),
    ("mkv", {"codec": "ffv1", "size": (48, 32), "frames": 20}),
    ("avi", {"codec": "mpeg4", "size": (80, 60), "frames": 24}),
    ("mp4", {"codec": "libx264", "size": (96, 54), "frames": 40}),
    ("mp4", {"codec": "libx264", "size": (32, 24), "frames": 12}),  # short: a warning
]
BROKEN = ("truncated.mp4", "corrupt.mp4", "junk.mp4", "empty.mp4", "audio.m4a", "missing.mp4")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def engine() -> Path:
    return tiny_engine("r2p1d_HEKE_4").resolve()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """50 good videos and the broken files, and a manifest of all of them."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "clips").mkdir()
    good = []
    for i in range(50):
        suffix, kwargs = SHAPES[i % len(SHAPES)]
        good.append(make_video(folder / "clips" / f"v{i:02d}.{suffix}", **kwargs))
    truncate_file(good[0], folder / "truncated.mp4", 0.3)
    corrupt_file(good[0], folder / "corrupt.mp4", at=0.4)
    (folder / "junk.mp4").write_bytes(os.urandom(3000))
    (folder / "empty.mp4").write_bytes(b"")
    make_audio(folder / "audio.m4a")
    paths = [*good, *(folder / name for name in BROKEN)]
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["path", "id", "label"])
        for i, path in enumerate(paths):
            shown = path.relative_to(folder) if i % 2 else path  # relative: from the manifest
            out.writerow([shown, f"clip-{i:02d}" if i % 3 == 0 else "", i / 10 if i % 4 else ""])
    ids = {
        str(p): f"clip-{i:02d}" if i % 3 == 0 else store.video_id(p) for i, p in enumerate(paths)
    }
    return {"folder": folder, "manifest": manifest, "paths": paths, "ids": ids}


@pytest.fixture(scope="module")
def regressor(tmp_path_factory) -> Path:
    """A random regressor over the tiny engine's features (the actors load it too)."""
    return random_regressor(tmp_path_factory.mktemp("regressor") / "reg.npz")


@pytest.fixture(scope="module")
def reference(engine, regressor, corpus) -> dict:
    """The single-machine Scorer's records, by path, with the backend, threads and batch size
    the one-CPU actors use: ONNX Runtime's float sums depend on its threads at batch 1."""
    with Scorer(engine, regressor, backend="onnxruntime-cpu", threads=1) as scorer:
        return {str(p): scorer.score(p).to_dict() for p in corpus["paths"]}


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(WORKERS) as local:
        yield local


# --------------------------------------------------------------------------- helpers


def engine_actors(local: Cluster) -> list[tuple[object, int]]:
    """(node, pid) of each engine actor: a child of a worker node's raylet named after
    Ray Data's MapWorker for InferActor."""
    table = processes()
    found = []
    for node in local.worker_nodes:
        raylet = node.all_processes["raylet"][0].process.pid
        for pid in descendants(raylet, table):
            command = table[pid][1]
            if "MapWorker" in command and "InferActor" in command:
                found.append((node, pid))
    return found


def wait_for_actor(local: Cluster, timeout_s: float = 60.0) -> tuple[object, int]:
    """The first engine actor, waiting while Ray (re)starts one."""
    deadline = time.monotonic() + timeout_s
    while not (found := engine_actors(local)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert found, "no engine actor came up"
    return found[0]


def assert_same_record(got: dict, want: dict) -> None:
    """Equal records, scores within SCORE_TOLERANCE; timing is not compared."""
    got = {k: v for k, v in got.items() if k not in ("id", "label", "run_id", "elapsed_s")}
    want = {k: v for k, v in want.items() if k != "elapsed_s"}
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key in ("scores", "spread"):
            assert got[key] == pytest.approx(value, abs=SCORE_TOLERANCE), key
        elif key == "snippets":
            assert len(got[key]) == len(value)
            for mine, theirs in zip(got[key], value):
                assert mine == pytest.approx(theirs, abs=SCORE_TOLERANCE)
        else:
            assert got[key] == value, key


def assert_complete(output: Path, corpus: dict, reference: dict) -> list[dict]:
    """Every input exactly once, each equal to the Scorer's record; returns the records."""
    records = store.read_results(output)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == len(corpus["paths"])
    by_path = {r["path"]: r for r in records}
    for path, want in reference.items():
        assert by_path[path]["id"] == corpus["ids"][path]
        assert_same_record(by_path[path], want)
    return records


# --------------------------------------------------------------------------- tests


def test_cluster_records_equal_single_machine_records(
    cluster, engine, regressor, corpus, reference, tmp_path
):
    output = tmp_path / "out"
    # A decode limit that never fires: the decode tasks take the timed path for real on the
    # cluster, and the records must still equal heke-run's.
    options = CorpusOptions(
        regressor=str(regressor), actors=1, flush_rows=8, jsonl=True, run_id="parity", timeout_s=300
    )
    summary = run_corpus([], engine, output, manifest=corpus["manifest"], options=options)
    total = len(corpus["paths"])
    failures = sum(r["status"] != "ok" for r in reference.values())
    assert failures >= 5  # the broken files really are broken
    assert (summary.inputs, summary.records, summary.missing) == (total, total, ())
    assert (summary.scored, summary.failed, summary.skipped) == (total - failures, failures, 0)
    records = assert_complete(output, corpus, reference)
    labels = {r["path"]: r["label"] for r in records}
    assert labels[str(corpus["paths"][1])] == pytest.approx(0.1)
    assert labels[str(corpus["paths"][4])] is None
    lines = (output / store.JSONL_NAME).read_text().splitlines()
    assert len(lines) == total
    assert not list((output / store.RUNS_DIR).glob("*/part-*"))  # compacted away
    assert (output / store.RUNS_DIR / "parity" / store.RUN_FILE).is_file()


def test_a_decode_past_the_timeout_is_heke_runs_error_record(cluster, engine, corpus, tmp_path):
    # prepare_batch waits for each decode thread exactly the limit, and no decode finishes
    # within a microsecond: every video times out. A limit dropped on its way to the decode
    # tasks would leave them scored.
    videos = [str(p) for p in corpus["paths"][:3]]
    output = tmp_path / "out"
    summary = run_corpus(videos, engine, output, options=CorpusOptions(actors=1, timeout_s=1e-6))
    timed_out = timeout_reason(1e-6)  # heke-run --timeout's text
    unread = f"skipped unread: {MAX_ABANDONED} earlier files still decode past --timeout"
    errors = [r["error"] for r in store.read_results(output)]
    assert (summary.scored, summary.failed) == (0, 3)
    assert timed_out in errors and set(errors) <= {timed_out, f"{unread} in this Ray worker"}


def test_killed_actor_and_lost_node_lose_nothing(
    cluster, engine, regressor, corpus, reference, tmp_path
):
    output = tmp_path / "out"
    events: list[str] = []
    # Records of this run the store held committed (part files) when each fault hit: fewer
    # than all inputs means the run still had work when the actor died and the node went.
    committed: dict[str, int] = {}
    pids: dict[str, int] = {}

    def sabotage(result):
        done = len(events) + 1
        events.append(result.path)
        if done == 10:  # the engine actor crashes: Ray restarts it, its batches rerun
            committed["kill"] = len(store.read_ids(store.committed_files(output)))
            pids["killed"] = wait_for_actor(cluster)[1]
            os.kill(pids["killed"], signal.SIGKILL)
        if done == 25:  # the node running the (restarted) actor disappears
            node, pids["restarted"] = wait_for_actor(cluster)
            committed["removal"] = len(store.read_ids(store.committed_files(output)))
            cluster.remove_node(node, allow_graceful=False)
            cluster.add_node(num_cpus=1)

    options = CorpusOptions(regressor=str(regressor), actors=1, flush_rows=8)
    summary = run_corpus(
        [], engine, output, manifest=corpus["manifest"], options=options, on_result=sabotage
    )
    total = len(corpus["paths"])
    assert 0 < committed["kill"] < committed["removal"] < total, committed
    assert pids["restarted"] != pids["killed"]  # the kill took: Ray started another actor
    assert len(events) == len(set(events)) == total
    assert summary.missing == () and summary.records == total
    assert_complete(output, corpus, reference)


def test_killed_driver_then_resume_rescores_nothing_finished(
    cluster, engine, regressor, corpus, reference, tmp_path
):
    output = tmp_path / "out"

    def command(run_id, *extra):
        return [
            sys.executable, "-m", "heke_corpus.cli", "--manifest", str(corpus["manifest"]),
            "-e", str(engine), "-o", str(output), "--address", cluster.address, "--actors", "1",
            "--flush-rows", "4", "--regressor", str(regressor), "--run-id", run_id, *extra,
        ]  # fmt: skip

    log = tmp_path / "first.log"
    with log.open("wb") as err:
        first = subprocess.Popen(command("first"), stdout=subprocess.DEVNULL, stderr=err)
    parts = output / store.RUNS_DIR / "first"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
        assert first.poll() is None, log.read_text()
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (output / store.RESULTS_DIR).exists(), "the first run finished before the kill"
    kept = {
        row["id"]: row["elapsed_s"]
        for part in parts.glob("part-*.parquet")
        for row in pq.read_table(part, columns=["id", "elapsed_s"]).to_pylist()
    }
    assert 12 <= len(kept) < len(corpus["paths"])

    second = subprocess.run(command("second", "--resume"), capture_output=True, text=True)
    assert second.returncode in (0, 1), second.stderr  # 1: broken files among the new ones
    assert f"resuming: {len(kept)} inputs already done" in second.stderr
    records = assert_complete(output, corpus, reference)
    first_rows = {r["id"]: r for r in records if r["run_id"] == "first"}
    assert first_rows.keys() == kept.keys()  # none of them scored again...
    assert all(first_rows[i]["elapsed_s"] == kept[i] for i in kept)  # ...the same records
    assert sum(r["run_id"] == "second" for r in records) == len(corpus["paths"]) - len(kept)


def test_manifests_in_every_format_read_the_same(cluster, tmp_path):
    rows = [
        {"path": "a.mp4", "id": "x1", "label": 1.5},
        {"path": "/abs/b.mp4", "id": None, "label": None},
    ]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "m.parquet")
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "m.csv").write_text("path,id,label\na.mp4,x1,1.5\n/abs/b.mp4,,\n")
    want = [
        {"id": "x1", "path": str(tmp_path / "a.mp4"), "label": 1.5},
        {"id": store.video_id("/abs/b.mp4"), "path": "/abs/b.mp4", "label": None},
    ]
    for name in ("m.parquet", "m.jsonl", "m.csv"):
        assert read_manifest(ray, tmp_path / name).to_pylist() == want, name
    (tmp_path / "empty.csv").write_text("path,id\n")
    assert read_manifest(ray, tmp_path / "empty.csv").num_rows == 0
    (tmp_path / "bad.csv").write_text("path,label\na.mp4,great\n")
    with pytest.raises(CorpusUsageError, match=r"1 bad rows.*'great' is not a number"):
        read_manifest(ray, tmp_path / "bad.csv")
    (tmp_path / "nopath.csv").write_text("file,label\na.mp4,1\n")
    with pytest.raises(CorpusUsageError, match="no 'path' column"):
        read_manifest(ray, tmp_path / "nopath.csv")


def test_the_cli_scores_its_own_inputs_and_exits_1_when_one_failed(
    cluster, engine, corpus, tmp_path
):
    # heke-corpus's exit status and its command-line inputs (not a manifest), through main:
    # only a real run can show them (docs/MUTATION.md, corpus-cli).
    from heke_corpus.cli import main

    good, junk = corpus["paths"][1], corpus["folder"] / "junk.mp4"
    out = tmp_path / "out"
    assert main([str(good), str(junk), "-e", str(engine), "-o", str(out), "--actors", "1"]) == 1
    statuses = {r["path"]: r["status"] for r in store.read_results(out)}
    assert statuses == {str(good): "ok", str(junk): "error"}
    clean = tmp_path / "clean"
    assert main([str(good), "-e", str(engine), "-o", str(clean), "--actors", "1"]) == 0
