"""Full-size models: export both precisions and verify, as ``heke-export --verify`` does."""

from __future__ import annotations

import time

import onnxruntime as ort
import pytest

from heke_export.onnx_export import onnx_from_weights
from heke_export.pipeline import ExportOptions, artifacts_from_weights, weights_for
from heke_export.verify import reference_case
from heke_ref.checkpoint import demo_weights
from heke_runtime.parity import compare
from heke_runtime.tolerances import ONNX_FP32
from tests.conftest import REFERENCE_DIR, reference_file


def _export_and_verify(weights, tmp_path) -> str:
    lines: list[str] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    options = ExportOptions(verify=True, reference_dir=REFERENCE_DIR)
    result = artifacts_from_weights(weights, tmp_path, options, echo=lines.append)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    report = "\n".join(lines)
    # Printed for whoever reads the log; how fast export is belongs in the benchmarks, not in
    # an assert that fails when the machine is busy.
    print(f"{report}\n{weights.model} export + verify: {elapsed:.0f} s wall, {cpu:.0f} s CPU")
    assert result.verified and len(result.reports) == 2, report
    return report


@pytest.mark.slow
def test_full_r2p1d_export_and_verify(tmp_path):
    # Demo weights: unlike the reference file's power-of-two weights they are not exact in
    # float16, so the FP16 blind-score check sees a trained network's rounding error.
    weights = demo_weights("r2p1d_HEKE_4")  # part of `heke-export --demo-weights`
    report = _export_and_verify(weights, tmp_path)
    assert "generated 1x144x256" in report  # the fp16 case with T*H*W > 65504 at stage 1
    assert "generated 7x48x64" in report and "generated 1x135x240" in report


@pytest.mark.slow
def test_full_r2p1d_fp32_onnx_matches_the_authors_outputs(tmp_path):
    weights = weights_for("r2p1d_HEKE_4", reference_file("upstream_r2p1d_HEKE_4.npz"))
    path = onnx_from_weights(weights, tmp_path, "fp32")
    case = reference_case(weights, REFERENCE_DIR)
    assert case is not None and case.upstream is not None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = dict(zip(("heads", "features"), session.run(["heads", "features"], case.inputs)))
    result = compare("onnx fp32 vs authors' outputs", actual, case.upstream, ONNX_FP32)
    assert result, result.report()


@pytest.mark.slow
def test_full_resnet_export_and_verify_with_the_authors_weights(tmp_path):
    weights = weights_for("resnet_HEKE_4", reference_file("upstream_resnet_HEKE_4.npz"))
    report = _export_and_verify(weights, tmp_path)
    assert "PASSED | onnx fp32 vs authors' outputs" in report
