"""TensorRT build path: the default profile, missing-TensorRT errors, the FP16 row tolerance
on the float16 oracle, and (GPU) real FP16 and INT8 builds whose rows match their oracles."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from heke_export.errors import TensorRTMissingError
from heke_export.fp16_oracle import fp16_evaluator
from heke_export.onnx_export import onnx_from_weights, onnx_model_from_weights
from heke_export.trt_build import (
    FRAME_SIZES,
    BuildOptions,
    Profile,
    default_profile,
    import_tensorrt,
    plan_from_onnx,
    tensorrt_logger,
    tensorrt_major,
)
from heke_export.verify import compare_rows, generated_inputs, torch_outputs
from heke_ref.checkpoint import demo_weights, load_model
from heke_runtime.sampling import model_input_size
from heke_runtime.sidecar import read_sidecar
from heke_runtime.tolerances import (
    FP16_ROW_FEATURES,
    FP16_ROW_HEADS,
    INT8_BLIND_SCORE,
    INT8_STAGE_REL_ERROR,
)
from tests.conftest import require

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
BOTH_ORIENTATIONS = [*FRAME_SIZES, *((h, w) for w, h in FRAME_SIZES)]
FP16_ROWS = {"heads": FP16_ROW_HEADS, "features": FP16_ROW_FEATURES}
# (rows, height, width) the real engine runs, inside its profile (batch 1..7, 64..144 x
# 64..256): 7 rows at an odd height, 3 at the smallest height, 9 rows split into 7 + 2.
ENGINE_BATCHES = ((7, 135, 240), (3, 64, 96), (9, 96, 128))


def engine_cases(model_name: str) -> list[dict[str, np.ndarray]]:
    return [
        generated_inputs(model_name, rows, height, width, seed)
        for seed, (rows, height, width) in enumerate(ENGINE_BATCHES)
    ]


def reference_rows(weights, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``heke_ref`` in float64 on the CPU: the oracle's own float32 error does not count."""
    return torch_outputs(load_model(weights).double(), inputs)


@pytest.mark.parametrize("model_name", ["r2p1d_HEKE_4", "resnet_HEKE_4"])
def test_default_profile_covers_144p_to_4k_both_orientations(model_name):
    profile = default_profile(model_name)
    assert (1920, 1080) in FRAME_SIZES and (256, 144) in FRAME_SIZES and (3840, 2160) in FRAME_SIZES
    for width, height in [*BOTH_ORIENTATIONS, (384, 216)]:
        h, w = model_input_size(width, height)
        assert profile.height[0] <= h <= profile.height[2], (width, height)
        assert profile.width[0] <= w <= profile.width[2], (width, height)
    # Tight: the bounds are attained, so the profile is no wider than it needs to be.
    inputs = [model_input_size(w, h) for w, h in BOTH_ORIENTATIONS]
    assert profile.height[::2] == (min(h for h, _ in inputs), max(h for h, _ in inputs))
    assert profile.width[::2] == (min(w for _, w in inputs), max(w for _, w in inputs))
    assert model_input_size(1080, 1920) == (480, 270)  # portrait 1080p needs H up to 480+
    assert profile.batch[0] == 1 and profile.batch[1] <= profile.batch[2]


def test_profile_rejects_bad_ranges_and_fills_shapes():
    with pytest.raises(ValueError, match="height"):
        Profile((1, 2, 4), (300, 200, 400), (100, 200, 300))
    with pytest.raises(ValueError, match="batch"):
        Profile((0, 1, 2), (1, 2, 3), (1, 2, 3))
    profile = Profile((1, 2, 4), (100, 200, 300), (110, 210, 310))
    shapes = profile.shapes({"clips": ["B", 3, 8, "H", "W"]})
    assert shapes == {"clips": [[1, 3, 8, 100, 110], [2, 3, 8, 200, 210], [4, 3, 8, 300, 310]]}
    assert profile.shapes({"rgb": ["B", 3, "H", "W"]})["rgb"][2] == [4, 3, 300, 310]


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here; this checks the error without it")
def test_missing_tensorrt_names_the_extra_and_writes_no_plan(tmp_path):
    with pytest.raises(TensorRTMissingError, match=r"pip install 'heke\[trt\]'"):
        import_tensorrt()
    onnx_path = onnx_from_weights(demo_weights("r2p1d_HEKE_4", tiny=True), tmp_path, "fp16")
    with pytest.raises(TensorRTMissingError):
        plan_from_onnx(onnx_path)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".onnx"]


@pytest.mark.gpu
def test_plan_from_onnx_builds_a_strongly_typed_engine_whose_rows_match_the_reference(tmp_path):
    require("tensorrt", "this test builds and runs a real TensorRT engine")
    require("cuda.bindings.runtime", "the TensorRT backend's CUDA calls")
    from heke_runtime.backends.tensorrt import TensorRTBackend

    weights = demo_weights("r2p1d_HEKE_4", tiny=True)
    onnx_path = onnx_from_weights(weights, tmp_path, "fp16")
    options = BuildOptions(Profile((1, 2, 7), (64, 96, 144), (64, 128, 256)), 1 << 30)
    lines: list[str] = []
    plan = plan_from_onnx(onnx_path, options=options, echo=lines.append)
    sidecar = read_sidecar(plan)
    trt = import_tensorrt()
    assert sidecar.kind == "tensorrt" and sidecar.precision == "fp16"
    assert sidecar.tensorrt is not None and sidecar.tensorrt["version"] == trt.__version__
    assert sidecar.tensorrt["gpu"] and "." in sidecar.tensorrt["compute_capability"]
    assert sidecar.profiles == [
        {"clips": {"min": [1, 3, 8, 64, 64], "opt": [2, 3, 8, 96, 128], "max": [7, 3, 8, 144, 256]}}
    ]
    cache = tmp_path / sidecar.tensorrt["timing_cache"]
    assert cache.is_file() and cache.stat().st_size > 0
    plan_from_onnx(onnx_path, tmp_path / "again.plan", options, echo=lines.append)  # reuses cache
    batches = engine_cases(weights.model)
    backend = TensorRTBackend(plan)
    with backend:
        outputs = list(backend.infer_many(iter(batches)))
    assert len(outputs) == len(batches)
    for inputs, actual in zip(batches, outputs):
        shape = "x".join(map(str, inputs["clips"].shape))
        wanted = reference_rows(weights, inputs)
        report = compare_rows(f"tensorrt fp16 {shape}", actual, wanted, FP16_ROWS)
        assert report, report.text()


@pytest.mark.gpu
def test_int8_plan_matches_its_tensorrt_form_on_onnx_runtime(tmp_path):
    """The INT8 plan is built from the graph's TensorRT form (heke_export.qdq_forms); that
    form run on ONNX Runtime CPU is what the engine should compute, give or take TensorRT's
    integer kernels. Per batch: each stage's features within the INT8 bar of it (relative L2),
    and every row's heads within the INT8 blind-score tolerance."""
    require("tensorrt", "this test builds and runs a real TensorRT INT8 engine")
    require("cuda.bindings.runtime", "the TensorRT backend's CUDA calls")
    import onnx
    import onnxruntime as ort

    from heke_export.int8 import Calibration, int8_from_weights
    from heke_export.int8_verify import stage_errors, stage_slices
    from heke_export.qdq_forms import tensorrt_form
    from heke_runtime.backends.tensorrt import TensorRTBackend

    weights = demo_weights("r2p1d_HEKE_4", tiny=True)
    onnx_path = int8_from_weights(weights, tmp_path, Calibration(), echo=lambda _: None)
    options = BuildOptions(Profile((1, 2, 7), (64, 96, 144), (64, 128, 256)), 1 << 30)
    plan = plan_from_onnx(onnx_path, options=options, echo=lambda _: None)
    assert read_sidecar(plan).precision == "int8"
    form = tensorrt_form(onnx.load(onnx_path)).SerializeToString()
    session = ort.InferenceSession(form, providers=["CPUExecutionProvider"])
    batches = engine_cases(weights.model)
    with TensorRTBackend(plan) as backend:
        outputs = list(backend.infer_many(iter(batches)))
    for inputs, actual in zip(batches, outputs):
        wanted = dict(zip(("heads", "features"), session.run(["heads", "features"], inputs)))
        errors = stage_errors(actual["features"], wanted["features"], stage_slices(weights))
        assert max(errors.values()) <= INT8_STAGE_REL_ERROR, errors
        shape = "x".join(map(str, inputs["clips"].shape))
        report = compare_rows(f"tensorrt int8 {shape}", actual, wanted, {"heads": INT8_BLIND_SCORE})
        assert report, report.text()


def test_fp16_graph_under_float16_semantics_meets_the_row_tolerance_on_the_engine_clips():
    """The FP16 graph the engine is built from, run with float16 kept as float16
    (heke_export.fp16_oracle), within the per-row tolerance on the clips the real engine
    runs: a GPU failure of the test above is then the engine's, not the tolerance's."""
    weights = demo_weights("r2p1d_HEKE_4", tiny=True)
    evaluator = fp16_evaluator(onnx_model_from_weights(weights, "fp16"))
    for inputs in engine_cases(weights.model):
        actual = dict(zip(evaluator.output_names, evaluator.run(None, inputs)))
        report = compare_rows("fp16 oracle", actual, reference_rows(weights, inputs), FP16_ROWS)
        assert report, report.text()


# Runtime-side names plan_from_onnx uses; the lean wheel (no builder) imports without a GPU.
LEAN_NAMES = (
    "ILogger.Severity.ERROR",
    "ILogger.Severity.WARNING",
    "DataType.FLOAT",
    "MemoryPoolType.WORKSPACE",
    "BuilderFlag.VERSION_COMPATIBLE",
    "Runtime",
)


def test_logger_and_names_against_the_real_tensorrt_bindings():
    trt = pytest.importorskip("tensorrt_lean_bindings", reason="needs tensorrt-lean bindings")
    for dotted in LEAN_NAMES:
        obj = trt
        for part in dotted.split("."):
            obj = getattr(obj, part)
    assert tensorrt_major(trt) >= 10
    log = tensorrt_logger(trt)
    log.log(trt.ILogger.Severity.INFO, "info")
    log.log(trt.ILogger.Severity.WARNING, "warning")
    log.log(trt.ILogger.Severity.ERROR, "error")
    log.log(trt.ILogger.Severity.INTERNAL_ERROR, "internal")
    assert log.errors == ["error", "internal"]
