"""INT8 on the full-size model with the shared reference weights: ``heke-export --precision
int8 --verify`` passes its bars, ONNX Runtime runs the graph with integer kernels and no float
ReLU between them, the TensorRT form passes the static check, heke-run scores a real clip as
the FP32 graph does within the INT8 tolerance, and heke-bench measures the INT8 backend."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from heke_bench.cli import main as heke_bench
from heke_export.cli import app
from heke_export.int8 import default_calibration_paths
from heke_export.onnx_export import io_spec
from heke_export.qdq_forms import tensorrt_form
from heke_export.trt_check import check_tensorrt_compat
from heke_ref.checkpoint import load_reference_weights, save_checkpoint
from heke_runtime.cli import main as heke_run
from heke_runtime.results import read_records
from heke_runtime.tolerances import INT8_BLIND_SCORE, INT8_STAGE_REL_ERROR
from tests.conftest import reference_file
from tests.test_export_int8 import kernels_run

MODEL = "r2p1d_HEKE_4"
BLIND = ("gmsd", "st_gmsd", "st_rred", "ms_ssim", "ensemble")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, str]:
    """The INT8 graph (verified) and the FP32 graph of the reference weights, and what
    ``--verify`` printed."""
    out = tmp_path_factory.mktemp("int8-full")
    weights = str(reference_file(f"upstream_{MODEL}.npz"))
    base = ["-m", MODEL, "--weights", weights, "--out", str(out)]
    verified = CliRunner().invoke(app, [*base, "--precision", "int8", "--verify"])
    assert verified.exit_code == 0, verified.output
    fp32 = CliRunner().invoke(app, [*base, "--precision", "fp32"])
    assert fp32.exit_code == 0, fp32.output
    return out / f"{MODEL}.int8.onnx", out / f"{MODEL}.fp32.onnx", verified.output


def test_verify_passes_every_stage_under_the_bar(exported):
    *_, output = exported
    summary = next(line for line in output.splitlines() if line.startswith("PASSED | verify"))
    errors = [float(e) for e in re.findall(r"f\d (\d+\.\d+)%", summary.split("(bar")[0])]
    assert len(errors) == 4 and max(errors) <= 100 * INT8_STAGE_REL_ERROR, summary
    assert "TensorRT form (ReLU outputs in 7 bits)" in output  # its figures are reported


def test_onnx_runtime_runs_integer_kernels_and_only_the_shared_relus(exported, tmp_path):
    int8, fp32, _ = exported
    kernels = kernels_run(int8, 136, 240, tmp_path)
    graph = onnx.load(fp32).graph
    readers = [
        sum(r.output[0] in n.input for n in graph.node) for r in graph.node if r.op_type == "Relu"
    ]
    assert kernels.count("QLinearConv") == 37  # every backbone convolution
    assert kernels.count("Relu") == sum(count > 1 for count in readers) == 9  # block ends


def test_the_tensorrt_form_passes_the_static_check(exported):
    report = check_tensorrt_compat(tensorrt_form(onnx.load(exported[0])), io=io_spec(MODEL))
    assert report, report.report()


def test_heke_run_scores_as_the_fp32_graph_within_the_int8_tolerance(exported, tmp_path):
    int8, fp32, _ = exported
    clip = str(default_calibration_paths()[1])  # bikes.mp4
    records = {}
    for path in (int8, fp32):
        out = tmp_path / f"{path.stem}.jsonl"
        assert heke_run([clip, "--engine", str(path), "--output", str(out)]) == 0
        records[path] = read_records(out)[0]
    assert records[int8]["engine"]["precision"] == "int8"
    for name in BLIND:
        got, want = records[int8]["scores"][name], records[fp32]["scores"][name]
        assert abs(got - want) <= INT8_BLIND_SCORE.atol, (name, got, want)


def test_heke_bench_measures_int8_against_fp32_with_parity(tmp_path, capsys):
    checkpoint = tmp_path / "reference.pkl"
    save_checkpoint(
        load_reference_weights(reference_file(f"upstream_{MODEL}.npz"), MODEL), checkpoint
    )
    out = tmp_path / "out"
    code = heke_bench(["--checkpoint", str(checkpoint), "--stages", "model", "--min-time", "1",
                       "--backends", "onnxruntime-cpu fp32,onnxruntime-cpu int8",
                       "--height", "136", "--width", "240", "--batch", "1",
                       "--out", str(out), "--workdir", str(tmp_path / "work")])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    figures = json.loads((out / "bench.json").read_text())
    rows = {m["label"]: m for m in figures["model"]}
    assert rows["onnxruntime-cpu int8"]["parity"]["passed"], rows["onnxruntime-cpu int8"]
    assert rows["onnxruntime-cpu int8"]["clips_per_s"] > 0
    assert "INT8 / ORT FP32 clips/s" in {t["target"] for t in figures["targets"]}
