"""``heke-export``: the happy path on tiny models and every bad input (one line, exit != 0)."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from heke_export.cli import app
from heke_export.onnx_export import onnx_from_weights
from heke_export.verify import verify_onnx
from heke_ref.checkpoint import demo_weights, save_checkpoint
from heke_runtime.sidecar import read_sidecar
from tests.conftest import REFERENCE_DIR, reference_file

runner = CliRunner()
TINY = ["--demo-weights", "--tiny"]


def _run(*args: str):
    return runner.invoke(app, list(args))


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("heke-export: error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


def test_tiny_export_with_verify_writes_checked_artifacts(tmp_path):
    out = tmp_path / "out"
    args = ("-m", "resnet_HEKE_4", *TINY, "--out", str(out), "--verify")
    result = _run(*args, "--reference-dir", str(REFERENCE_DIR))
    assert result.exit_code == 0, result.output
    assert "DEMO weights" in result.stdout
    assert result.stdout.count("PASSED | verify ") == 2 and "FAILED" not in result.stdout
    if REFERENCE_DIR.is_dir():
        assert "shared reference 2x3x144x176" in result.stdout
    names = sorted(p.name for p in out.iterdir())
    stems = ["resnet_HEKE_4-tiny-demo.fp16.onnx", "resnet_HEKE_4-tiny-demo.fp32.onnx"]
    assert names == sorted([*stems, *(s + ".json" for s in stems)])
    assert {read_sidecar(out / s).precision for s in stems} == {"fp16", "fp32"}


def test_verify_fails_when_the_graph_does_not_compute_the_model(tmp_path):
    """The check can fail: a graph exported from other weights does not pass."""
    exported = onnx_from_weights(demo_weights("resnet_HEKE_4", tiny=True, seed=1), tmp_path)
    other = demo_weights("resnet_HEKE_4", tiny=True, seed=2)
    report = verify_onnx(exported, other, reference_dir=tmp_path, sizes=((2, 32, 48),))
    assert not report and report.text().splitlines()[-1].startswith("FAILED | verify ")
    assert "not the ones the graph was exported from" in report.text()


def test_unknown_model_lists_the_valid_ones(tmp_path):
    result = _run("-m", "r3d_HEKE_4", "--demo-weights", "--out", str(tmp_path / "o"))
    _one_line_error(result, "r3d_HEKE_4", "r2p1d_HEKE_4", "resnet_HEKE_4")
    assert not (tmp_path / "o").exists()


def test_missing_and_damaged_weights(tmp_path):
    out = ("--out", str(tmp_path / "o"))
    for missing in ("none.pkl", "none.npz"):
        result = _run("-m", "r2p1d_HEKE_4", "--weights", str(tmp_path / missing), *out)
        _one_line_error(result, "no such file")
    damaged = tmp_path / "damaged.pkl"
    torch.save({"state_dict": {"x": torch.zeros(2)}}, damaged)
    damaged.write_bytes(damaged.read_bytes()[:40])
    _one_line_error(_run("-m", "r2p1d_HEKE_4", "--weights", str(damaged), *out), str(damaged))
    assert not (tmp_path / "o").exists()


def test_checkpoint_of_the_other_model(tmp_path):
    other = tmp_path / "resnet.pkl"
    save_checkpoint(demo_weights("resnet_HEKE_4", tiny=True), other)
    result = _run("-m", "r2p1d_HEKE_4", "--weights", str(other), "--out", str(tmp_path / "o"))
    _one_line_error(result, "looks like a resnet_HEKE_4 checkpoint")
    assert not (tmp_path / "o").exists()


def test_reference_weights_of_the_other_model(tmp_path):
    path = reference_file("upstream_resnet_HEKE_4.npz")
    result = _run("-m", "r2p1d_HEKE_4", "--weights", str(path), "--out", str(tmp_path / "o"))
    _one_line_error(result, "resnet_HEKE_4")
    assert not (tmp_path / "o").exists()


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _run("-m", "r2p1d_HEKE_4", *TINY, "--out", str(blocker / "out"))
    _one_line_error(result, "cannot write to output folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_tensorrt_missing_still_writes_the_onnx(tmp_path):
    result = _run(
        "-m", "resnet_HEKE_4", *TINY, "--out", str(tmp_path), "--precision", "fp16", "--tensorrt"
    )
    _one_line_error(result, "pip install 'heke[trt]'", "ONNX written")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "resnet_HEKE_4-tiny-demo.fp16.onnx",
        "resnet_HEKE_4-tiny-demo.fp16.onnx.json",
    ]
    read_sidecar(tmp_path / "resnet_HEKE_4-tiny-demo.fp16.onnx")


def test_usage_errors_exit_2_and_write_nothing(tmp_path):
    out = str(tmp_path / "o")
    assert _run("-m", "r2p1d_HEKE_4", "--out", out).exit_code == 2  # no weights at all
    both = _run("-m", "r2p1d_HEKE_4", "--demo-weights", "--weights", "w.pkl", "--out", out)
    assert both.exit_code == 2
    bad = _run("-m", "r2p1d_HEKE_4", *TINY, "--out", out, "--tensorrt", "--batch", "1:8")
    assert bad.exit_code == 2 and "MIN:OPT:MAX" in bad.output
    backwards = _run(
        "-m", "r2p1d_HEKE_4", *TINY, "--out", out, "--tensorrt", "--height", "300:200:100"
    )
    assert backwards.exit_code == 2
    assert _run("-m", "r2p1d_HEKE_4", *TINY, "--precision", "fp8", "--out", out).exit_code == 2
    assert not (tmp_path / "o").exists()
