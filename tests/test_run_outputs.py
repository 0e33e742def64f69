"""What ``heke-run`` writes beyond the blind score: ``--pool``, ``--per-snippet`` tables, the
video-level CSV, and the published record schema (``--schema``), on real runs of a tiny
engine over generated videos."""

from __future__ import annotations

import csv
import json

import jsonschema
import numpy as np
import pytest
from scipy import stats

from heke_runtime.cli import main
from heke_runtime.results import (
    SnippetScore,
    VideoResult,
    csv_columns,
    read_records,
    record_schema_text,
    with_pools,
)
from heke_runtime.snippet_table import COLUMNS
from tests.conftest import check_record
from tests.test_backends import tiny_engine
from tests.videos import make_video

HEADS = ("gmsd", "st_gmsd", "st_rred", "ms_ssim", "ensemble")


@pytest.fixture(scope="module")
def engine():
    return str(tiny_engine("r2p1d_HEKE_4"))


@pytest.fixture
def videos(tmp_path):
    return [
        make_video(tmp_path / "a.mp4", frames=40),
        make_video(tmp_path / "b.mkv", frames=30, size=(48, 32)),
    ]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _oracle(values: np.ndarray, how: str) -> float:
    """Each pooling computed another way than heke_runtime.scores does it."""
    if how == "harmonic":
        return float(stats.hmean(values))
    if how in ("min", "max", "median"):
        return float({"min": min, "max": max, "median": np.median}[how](values))
    return float(np.quantile(values, int(how[1:]) / 100, method="linear"))


def test_every_pooling_of_every_score_is_in_the_record_csv_and_table(
    tmp_path, capsys, engine, videos
):
    pools = ("harmonic", "min", "max", "median", "p5", "p95")
    out = tmp_path / "r.jsonl"
    code, table, err = run(
        capsys, *videos, "-e", engine, "-o", out, "--pool", "mean," + ",".join(pools)
    )
    assert code == 0, err
    for record in read_records(out):
        assert list(record["pooled"]) == list(pools)  # mean stays in "scores"
        for how in pools:
            for name in HEADS:
                column = np.array([s[name] for s in record["snippets"]])
                if how == "harmonic" and not np.all(column > 0):
                    assert record["pooled"][how][name] is None
                    continue
                assert record["pooled"][how][name] == pytest.approx(_oracle(column, how), abs=2e-6)
        spread = record["pooled"]["max"]["ensemble"] - record["pooled"]["min"]["ensemble"]
        assert spread > 0  # the snippets differ, so the poolings can be told apart
    for how in pools:
        assert f"-- {how} over snippets" in table
    csv_out = tmp_path / "r.csv"
    assert run(capsys, *videos, "-e", engine, "-o", csv_out, "--pool", "p95,min")[0] == 0
    rows = list(csv.DictReader(csv_out.open()))
    assert tuple(rows[0]) == csv_columns(("p95", "min"))
    by_path = {r["path"]: r for r in read_records(out)}
    for row in rows:
        want = by_path[row["path"]]["pooled"]
        assert float(row["ensemble_p95"]) == pytest.approx(want["p95"]["ensemble"], abs=1e-6)
        assert float(row["gmsd_min"]) == pytest.approx(want["min"]["gmsd"], abs=1e-6)


def test_a_pooling_a_video_cannot_have_is_null_with_a_warning():
    snippets = tuple(
        SnippetScore(i, i, i + 1, 8 * i, 8 * i + 7, {n: v for n in HEADS})
        for i, v in enumerate((2.0, -1.0, 3.0))
    )
    result = with_pools(VideoResult("v.mp4", "ok", snippets=snippets), ("mean", "harmonic", "p50"))
    assert result.pooled["harmonic"] == dict.fromkeys(HEADS)
    assert result.pooled["p50"]["gmsd"] == 2.0
    assert result.warnings == (
        "harmonic pooling undefined for gmsd, st_gmsd, st_rred, ms_ssim, ensemble: the "
        "harmonic mean needs positive scores",
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_per_snippet_rows_match_the_records(tmp_path, capsys, engine, videos, suffix):
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    table = tmp_path / f"snippets{suffix}"
    out = tmp_path / "r.jsonl"
    code, _, err = run(capsys, *videos, broken, "-e", engine, "-o", out, "--per-snippet", table)
    assert code == 1, err  # the broken file fails alone and has no rows
    rows = _read_table(table)
    records = [r for r in read_records(out) if r["status"] == "ok"]
    assert len(rows) == sum(len(r["snippets"]) for r in records) == 24
    expected = [{"path": r["path"], "regressor": None, **s} for r in records for s in r["snippets"]]
    for row, want in zip(rows, expected):
        assert set(row) == set(COLUMNS)
        for column in COLUMNS:
            if want[column] is None:  # no regressor: an empty cell
                assert row[column] in (None, ""), column
            else:
                assert row[column] == pytest.approx(want[column]), column


def _read_table(path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = list(csv.DictReader(path.open()))
    numbers = set(COLUMNS) - {"path", "regressor"}
    return [{k: (float(v) if k in numbers else v) for k, v in row.items()} for row in rows]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_resume_keeps_the_rows_of_recorded_videos_only(tmp_path, capsys, engine, videos, suffix):
    table, out = tmp_path / f"s{suffix}", tmp_path / "r.jsonl"
    assert run(capsys, videos[0], "-e", engine, "-o", out, "--per-snippet", table)[0] == 0
    code, _, err = run(capsys, videos[0], "-e", engine, "-o", out, "--per-snippet", table)
    assert code == 2 and "--resume" in err
    lines = out.read_text().splitlines()
    out.write_text("")  # as if the run had stopped between a video's rows and its record
    code, _, err = run(capsys, *videos, "-e", engine, "-o", out, "--per-snippet", table, "--resume")
    assert code == 0, err
    rows = _read_table(table)
    assert [r["path"] for r in rows] == [str(videos[0])] * 12 + [str(videos[1])] * 12
    assert lines  # the first run did write its record


def test_resuming_a_csv_with_other_poolings_is_refused(tmp_path, capsys, engine, videos):
    out = tmp_path / "r.csv"
    assert run(capsys, videos[0], "-e", engine, "-o", out, "--pool", "p95")[0] == 0
    code, _, err = run(capsys, *videos, "-e", engine, "-o", out, "--resume")
    assert code == 2
    assert "its CSV columns differ from this run's (another --pool?)" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pool", "mean,p101"], "--pool 'mean,p101': p101 is not one of mean"),
        (["--pool", "average"], "average is not one of"),
        (["--per-snippet", "rows.txt"], "--per-snippet rows.txt: give a .csv or .parquet file"),
    ],
)
def test_usage_errors(tmp_path, capsys, engine, videos, args, message):
    code, _, err = run(capsys, videos[0], "-e", engine, *args)
    assert code == 2 and message in err


def test_schema_is_printed_without_an_engine_and_every_record_follows_it(
    tmp_path, capsys, engine, videos
):
    code, out, _ = run(capsys, "--schema")
    assert code == 0 and out == record_schema_text()
    # Eager, as --help is: it answers whatever else the line holds, even a bad value before it.
    assert run(capsys, "--batch-size", "0", "--schema")[:2] == (0, out)
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    results = tmp_path / "r.jsonl"
    run(capsys, *videos, broken, "-e", engine, "-o", results, "--pool", "p95,harmonic")
    records = read_records(results)
    assert [r["schema_version"] for r in records] == [1, 1, 1]
    for record in records:
        check_record(record)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.pop("path"),
        lambda r: r.update(status="fine"),
        lambda r: r.update(schema_version=2),
        lambda r: r["scores"].pop("ensemble"),
        lambda r: r.update(error="a reason on an ok record"),
        lambda r: r["snippets"][0].update(first_frame=-1),
        lambda r: r.update(pooled={"average": {"gmsd": 1.0}}),
    ],
)
def test_the_schema_refuses_what_a_record_must_not_be(tmp_path, capsys, engine, videos, change):
    results = tmp_path / "r.json"  # not .jsonl: the conftest check would see the broken one
    assert run(capsys, videos[0], "-e", engine, "-o", results.with_suffix(".jsonl"))[0] == 0
    (record,) = read_records(results.with_suffix(".jsonl"))
    check_record(record)
    change(record)
    with pytest.raises(jsonschema.ValidationError):
        check_record(record)
