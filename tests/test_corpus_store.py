"""The corpus output folder without Ray: ids, the row layout, atomic parts, resume, compaction
(including what an interrupted compaction leaves behind)."""

from __future__ import annotations

import json
import os

import pytest

pa = pytest.importorskip("pyarrow", reason="the corpus store needs pyarrow (heke[ray])")
pq = pytest.importorskip("pyarrow.parquet")

from heke_corpus import store  # noqa: E402
from heke_corpus.pipeline import normalise_manifest  # noqa: E402
from heke_corpus.run import CorpusError, CorpusUsageError  # noqa: E402
from heke_runtime.results import (  # noqa: E402
    EngineMeta,
    Sampling,
    SnippetScore,
    VideoMeta,
    VideoResult,
    failed,
)


def ok_result(path="/v/a.mp4", ensemble=2.5, regressor=True):
    scores = {"gmsd": 1.0, "st_gmsd": 2.0, "st_rred": 3.0, "ms_ssim": 4.0, "ensemble": ensemble}
    if regressor:
        scores["regressor"] = 6.25
    engine = EngineMeta("/e.onnx", "ab", "onnx", "fp32", "r2p1d_HEKE_4", "cd", True, "ort", "CPU")
    return VideoResult(
        path=path,
        status="ok",
        scores=scores,
        spread={k: v / 10 for k, v in scores.items()},
        snippets=(SnippetScore(0, 0.0, 0.32, 0, 7, dict(scores)),),
        video=VideoMeta(40, 25.0, 1.6, 64, 48, "h264", "yuv420p", 0),
        sampling=Sampling("r2p1d_HEKE_4", 12, 8, 2, 1, 48, 64),
        engine=engine,
        regressor={"path": "/r.npz", "sha256": "ef"} if regressor else None,
        demo_weights=True,
        warnings=("short video",),
        elapsed_s=0.25,
    )


def row(result, video_id=None, run_id="r1", label=None):
    record = result.to_dict()
    return store.row_from_record(
        record, video_id=video_id or store.video_id(result.path), label=label, run_id=run_id
    )


@pytest.mark.parametrize(
    "result",
    [ok_result(), ok_result(regressor=False), failed("/v/bad.mp4", "not a video", elapsed_s=1)],
    ids=["ok", "ok-no-regressor", "error"],
)
def test_rows_round_trip_to_heke_run_records(result, tmp_path):
    path = store.write_parquet_atomic(store.rows_table([row(result, label=3.5)]), tmp_path / "a")
    back = store.record_from_row(pq.read_table(path).to_pylist()[0])
    assert {k: back.pop(k) for k in ("id", "label", "run_id")} == {
        "id": store.video_id(result.path),
        "label": 3.5,
        "run_id": "r1",
    }
    assert back == result.to_dict()
    assert VideoResult.from_dict(back) == VideoResult.from_dict(result.to_dict())


def test_scores_are_queryable_columns(tmp_path):
    path = store.write_parquet_atomic(store.rows_table([row(ok_result())]), tmp_path / "a")
    table = pq.read_table(path)
    assert table.column("scores").combine_chunks().field("ensemble").to_pylist() == [2.5]
    assert json.loads(table.column("video")[0].as_py())["width"] == 64


def test_unknown_score_names_are_refused():
    bad = ok_result().to_dict()
    bad["scores"]["new_head"] = 1.0
    with pytest.raises(CorpusError, match="new_head"):
        store.row_from_record(bad, video_id="x", label=None, run_id="r")


def test_video_id_is_stable_and_normalised(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    same = store.video_id(tmp_path / "a.mp4")
    assert store.video_id("a.mp4") == same == store.video_id(f"{tmp_path}/./x/../a.mp4")
    assert len(same) == store.ID_HEX and store.video_id("b.mp4") != same


@pytest.mark.parametrize("bad", ["", "../up", "a/b", "-dash", "x" * 65])
def test_run_ids_must_name_a_plain_folder(bad):
    with pytest.raises(CorpusUsageError, match="run id"):
        store.check_run_id(bad)


def test_parts_are_numbered_whole_files(tmp_path):
    writer = store.PartWriter(tmp_path / "run", flush_rows=2)
    writer.add(store.rows_table([row(ok_result(f"/v/{i}.mp4")) for i in range(3)]))
    assert writer.rows_committed == 3 and writer.rows_waiting == 0
    writer.add(store.rows_table([row(ok_result("/v/9.mp4"))]))
    assert writer.flush() is not None and writer.flush() is None
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["part-000001.parquet", "part-000002.parquet"]  # no temporary names
    again = store.PartWriter(tmp_path / "run", flush_rows=1)  # a resumed run keeps counting
    again.add(store.rows_table([row(ok_result("/v/10.mp4"))]))
    assert (tmp_path / "run" / "part-000003.parquet").is_file()


def make_parts(output, run_id, paths):
    writer = store.PartWriter(output / store.RUNS_DIR / run_id, flush_rows=10**6)
    writer.add(store.rows_table([row(ok_result(p), run_id=run_id) for p in paths]))
    writer.flush()


def test_compaction_keeps_one_row_per_id_and_consumes_parts(tmp_path):
    make_parts(tmp_path, "r1", ["/v/a.mp4", "/v/b.mp4"])
    make_parts(tmp_path, "r2", ["/v/b.mp4", "/v/c.mp4"])  # b twice: compaction keeps the first
    assert store.done_ids(tmp_path).to_pylist().__len__() == 3
    assert store.compact(tmp_path, jsonl=True, rows_per_file=2) == 3
    records = store.read_results(tmp_path)
    assert sorted(r["path"] for r in records) == ["/v/a.mp4", "/v/b.mp4", "/v/c.mp4"]
    assert next(r["run_id"] for r in records if r["path"] == "/v/b.mp4") == "r1"
    assert len(list((tmp_path / store.RESULTS_DIR).glob("*.parquet"))) == 2
    assert not list((tmp_path / store.RUNS_DIR).glob("*/part-*"))
    lines = (tmp_path / store.JSONL_NAME).read_text().splitlines()
    assert sorted(json.loads(line)["path"] for line in lines) == sorted(r["path"] for r in records)
    make_parts(tmp_path, "r3", ["/v/d.mp4", "/v/a.mp4"])
    assert store.compact(tmp_path, jsonl=False) == 4  # results.jsonl exists: kept up to date
    assert len((tmp_path / store.JSONL_NAME).read_text().splitlines()) == 4


def test_an_interrupted_compaction_loses_nothing(tmp_path):
    make_parts(tmp_path, "r1", ["/v/a.mp4", "/v/b.mp4"])
    store.compact(tmp_path, jsonl=False)
    make_parts(tmp_path, "r2", ["/v/c.mp4"])
    # Killed between the two renames: the old set aside, no results/, a half-built new set.
    (tmp_path / store.RESULTS_DIR).rename(tmp_path / f"{store.OLD_PREFIX}x")
    (tmp_path / f"{store.TMP_PREFIX}y").mkdir()
    (tmp_path / f"{store.TMP_PREFIX}y" / "part-00000.parquet").write_bytes(b"torn")
    assert len(store.done_ids(tmp_path)) == 3
    assert store.compact(tmp_path, jsonl=False) == 3
    assert sorted(os.listdir(tmp_path)) == [store.RESULTS_DIR, store.RUNS_DIR]


def test_compaction_of_nothing_leaves_an_empty_typed_set(tmp_path):
    assert store.compact(tmp_path, jsonl=False) == 0
    assert pq.read_table(tmp_path / store.RESULTS_DIR / "part-00000.parquet").schema.equals(
        store.ROW_SCHEMA
    )


def test_foreign_parquet_files_are_named(tmp_path):
    (tmp_path / store.RESULTS_DIR).mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / store.RESULTS_DIR / "part-00000.parquet")
    with pytest.raises(CorpusError, match="not a heke-corpus record file"):
        store.done_ids(tmp_path)


def test_one_run_at_a_time(tmp_path):
    with (
        store.output_lock(tmp_path),
        pytest.raises(CorpusError, match="another heke-corpus run"),
        store.output_lock(tmp_path),
    ):
        pass
    with store.output_lock(tmp_path):  # released when the first run ends
        pass


def test_overwrite_removes_only_what_heke_corpus_wrote(tmp_path):
    make_parts(tmp_path, "r1", ["/v/a.mp4"])
    store.compact(tmp_path, jsonl=True)
    (tmp_path / "notes.txt").write_text("mine")
    store.clear_output(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_manifest_rows_are_normalised(tmp_path):
    batch = pa.table(
        {
            "path": ["a.mp4", "/abs/b.mp4", "sub/../c.mp4"],
            "id": [None, "17", ""],
            "label": [1, None, 3.5],
            "other": ["x", "y", "z"],
        }
    )
    rows = normalise_manifest(batch, base=str(tmp_path)).to_pylist()
    assert [r["path"] for r in rows] == [
        str(tmp_path / "a.mp4"),
        "/abs/b.mp4",
        str(tmp_path / "c.mp4"),
    ]
    assert [r["id"] for r in rows] == [
        store.video_id(tmp_path / "a.mp4"),
        "17",
        store.video_id(tmp_path / "c.mp4"),
    ]
    assert [r["label"] for r in rows] == [1.0, None, 3.5]
    assert [r["problem"] for r in rows] == [None, None, None]


def test_bad_manifest_rows_say_why(tmp_path):
    batch = pa.table({"path": ["a.mp4", " ", "c.mp4"], "label": ["good", "1", ""]})
    problems = normalise_manifest(batch, base=str(tmp_path)).column("problem").to_pylist()
    assert problems == ["label 'good' is not a number", "empty path", None]


def test_numeric_manifest_ids_become_text(tmp_path):
    rows = normalise_manifest(pa.table({"path": ["a", "b"], "id": [5, 17]}), base=str(tmp_path))
    assert rows.column("id").to_pylist() == ["5", "17"]
