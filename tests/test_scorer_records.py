"""Result records: JSON lines and CSV writing, reading back, resume and the summary table."""

from __future__ import annotations

import json

import pytest

from heke_runtime.results import (
    CSV_COLUMNS,
    EngineMeta,
    OutputError,
    RecordWriter,
    Sampling,
    SnippetScore,
    VideoMeta,
    VideoResult,
    failed,
    format_table,
    load_results,
    read_records,
)


def scored(path="a.mp4", demo=True):
    snippet = SnippetScore(
        0,
        0.36,
        1.0,
        9,
        23,
        {"gmsd": 2.0, "st_gmsd": 3.0, "st_rred": 4.0, "ms_ssim": 5.0, "ensemble": 3.5},
    )
    return VideoResult(
        path=path,
        status="ok",
        scores={"gmsd": 2.0, "st_gmsd": 3.0, "st_rred": 4.0, "ms_ssim": 5.0, "ensemble": 3.5},
        spread={"gmsd": 0.0, "st_gmsd": 0.0, "st_rred": 0.0, "ms_ssim": 0.0, "ensemble": 0.0},
        snippets=(snippet,),
        video=VideoMeta(40, 25.0, 1.6, 64, 48, "h264", "yuv420p", 0),
        sampling=Sampling("r2p1d_HEKE_4", 12, 8, 2, 1, 48, 64),
        engine=EngineMeta(
            "m.onnx",
            "e" * 64,
            "onnx",
            "fp32",
            "r2p1d_HEKE_4",
            "w" * 64,
            demo,
            "onnxruntime",
            "ONNX Runtime CPUExecutionProvider",
        ),
        demo_weights=demo,
    )


def test_json_record_round_trips_and_says_demo(tmp_path):
    out = tmp_path / "r.jsonl"
    with RecordWriter(out) as writer:
        writer.write(scored())
        writer.write(failed("b.mp4", "VideoDecodeError: bad\nsecond line"))
    lines = out.read_text().splitlines()
    first = json.loads(lines[0])
    assert first["status"] == "ok" and first["demo_weights"] is True and "note" in first
    assert first["snippets"][0]["start_s"] == 0.36 and first["scale"].startswith("DMOS-like")
    assert json.loads(lines[1])["error"] == "VideoDecodeError: bad second line"
    back = load_results(out)
    assert back[0] == scored() and not back[1].ok


def test_csv_has_fixed_columns_and_reads_back(tmp_path):
    out = tmp_path / "r.csv"
    with RecordWriter(out) as writer:
        writer.write(scored())
        writer.write(failed("b.mp4", "broken"))
    lines = out.read_text().splitlines()
    assert tuple(lines[0].split(",")) == CSV_COLUMNS and "snippets" not in CSV_COLUMNS
    assert not any(c in line for line in lines for c in "[{")  # no JSON in a cell
    back = load_results(out)
    assert back[0].scores["ensemble"] == 3.5 and back[0].snippets == ()  # rows: --per-snippet
    assert back[1].error == "broken"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_keeps_records_and_trims_a_torn_line(tmp_path, suffix):
    out = tmp_path / f"r{suffix}"
    with RecordWriter(out) as writer:
        writer.write(scored("a.mp4"))
    with out.open("a") as handle:
        handle.write('{"path": "half-writ')  # a crash mid-record
    with RecordWriter(out, resume=True) as writer:
        assert writer.has("a.mp4") and writer.has(str(tmp_path.cwd() / "a.mp4"))
        assert not writer.has("b.mp4")
        writer.write(scored("b.mp4"))
    assert [r["path"] for r in read_records(out)] == ["a.mp4", "b.mp4"]


def test_existing_output_is_not_clobbered_without_a_flag(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps(scored().to_dict()) + "\n")
    with pytest.raises(OutputError, match="--resume"), RecordWriter(out):
        pass
    with RecordWriter(out, overwrite=True) as writer:
        writer.write(scored("c.mp4"))
    assert [r["path"] for r in read_records(out)] == ["c.mp4"]


def test_table_lists_scores_and_failures():
    table = format_table([scored(), failed("missing.mp4", "no such file")])
    lines = table.splitlines()
    assert "ensemble" in lines[0] and "3.500" in lines[1]
    assert "no such file" in lines[2] and "1 scored, 1 failed" in lines[3]
    assert "demo weights" in table
