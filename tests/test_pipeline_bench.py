"""heke-bench's smoke run: every stage on the tiny model, outputs checked, JSON and chart."""

from __future__ import annotations

import importlib.util
import json

from heke_bench.cli import main


def test_quick_bench_measures_every_stage_and_writes_json_and_chart(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--quick", "--out", str(out), "--workdir", str(tmp_path / "work"),
                 "--long-seconds", "3", "--backends", "onnxruntime-cpu fp32"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    figures = json.loads((out / "bench.json").read_text())
    assert figures["sgemm"]["gflops"] > 0 and figures["decode"]["decode_fps"] > 0
    assert all(m["parity"]["passed"] for m in figures["model"])
    assert figures["end_to_end"]["max_abs_vs_model_only"] <= 1e-3
    assert figures["seek"]["identical_frames"] and figures["decode_only"]["videos_per_s"] > 0
    assert {t["target"] for t in figures["targets"]} >= {"end-to-end time / model-only time"}
    assert "GFLOP/s" in printed and "target " in printed and figures["system"]["versions"]
    if importlib.util.find_spec("matplotlib"):
        assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    assert main(["--quick", "--stages", "warp", "--out", str(tmp_path)]) == 1
    assert "unknown stages ['warp']" in capsys.readouterr().err
