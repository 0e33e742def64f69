"""Backends: ONNX Runtime against the torch reference, input checks, sidecar checks, choice
by suffix, and the TensorRT backend's refusals (which need no GPU)."""

from __future__ import annotations

import atexit
import dataclasses
import functools
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from heke_ref.checkpoint import demo_weights, load_model
from heke_runtime.backends import (
    BACKENDS,
    BackendError,
    BackendUnavailableError,
    BaseBackend,
    InferenceInputError,
    backend_name_for,
    open_backend,
)
from heke_runtime.backends.onnxruntime import OnnxRuntimeBackend
from heke_runtime.backends.tensorrt import GpuInfo, TensorRTBackend, compatibility_problems
from heke_runtime.files import sha256_file
from heke_runtime.parity import compare
from heke_runtime.sidecar import SidecarError, read_sidecar, write_sidecar
from heke_runtime.tolerances import FP16_BLIND_SCORE, ONNX_FP32
from tests.videos import make_video


@functools.cache
def tiny_engine(model_name: str, precision: str = "fp32") -> Path:
    """A tiny-model ONNX with its sidecar (demo weights), exported once per test run and
    shared by the backend, scorer and CLI tests."""
    from heke_export.onnx_export import onnx_from_weights

    folder = Path(tempfile.mkdtemp(prefix="heke-engines-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return onnx_from_weights(demo_weights(model_name, tiny=True), folder, precision)


def random_regressor(path: Path) -> Path:
    """A seeded random regressor over the tiny r2p1d engine's 360 features, saved at ``path``
    (its scores lie near 5)."""
    from heke_runtime.regressor import save_regressor, upstream_layout

    layout = upstream_layout("r2p1d_HEKE_4", 360)
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(0, 0.1, (128, layout.dim)), "b1": np.zeros(128),
        "w2": rng.normal(0, 0.1, (32, 128)), "b2": np.zeros(32),
        "w3": rng.normal(0, 0.1, (1, 32)), "b3": np.full(1, 5.0),
    }  # fmt: skip
    return save_regressor(path, layout, weights)


@pytest.fixture
def r2p1d():
    return tiny_engine("r2p1d_HEKE_4")


@pytest.fixture
def resnet():
    return tiny_engine("resnet_HEKE_4")


def reference(model_name, *inputs):
    model = load_model(demo_weights(model_name, tiny=True))
    with torch.no_grad():
        out = model(*(torch.from_numpy(x) for x in inputs))
    return {"heads": out.heads.numpy(), "features": out.features.numpy()}


def frames(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("hw", [(32, 40), (27, 45)])
def test_onnxruntime_matches_torch_r2p1d(r2p1d, hw):
    clips = frames((3, 3, 8, *hw))
    with open_backend(r2p1d) as backend:
        assert isinstance(backend, BaseBackend) and "CPUExecutionProvider" in backend.device
        out = backend.infer({"clips": clips})
    result = compare("ort vs torch", out, reference("r2p1d_HEKE_4", clips), ONNX_FP32)
    assert result, result.report()


def test_onnxruntime_matches_torch_resnet(resnet):
    rgb, dif = frames((2, 3, 64, 80), 1), 0.1 * frames((2, 3, 64, 80), 2)
    with open_backend(resnet) as backend:
        out = backend.infer({"rgb": rgb, "dif": dif})
    result = compare("ort vs torch", out, reference("resnet_HEKE_4", rgb, dif), ONNX_FP32)
    assert result, result.report()


def test_fp16_graph_runs_and_says_how(r2p1d):
    clips = frames((2, 3, 8, 32, 40), 3)
    with open_backend(tiny_engine("r2p1d_HEKE_4", "fp16")) as half, open_backend(r2p1d) as full:
        assert "computes it in float32" in half.device  # ORT CPU is no fp16 oracle: say so
        blind = half.infer({"clips": clips})["heads"].mean(axis=0)
        expected = full.infer({"clips": clips})["heads"].mean(axis=0)
    assert np.abs(blind - expected).max() <= FP16_BLIND_SCORE.atol


def test_inputs_are_checked_before_running(r2p1d, resnet):
    good = frames((1, 3, 8, 32, 40))
    with open_backend(r2p1d) as backend:
        for bad, match in [
            ({"video": good}, "engine takes \\['clips'\\]"),
            ({"clips": good.astype(np.float64)}, "float64"),
            ({"clips": good[:, :, :4]}, "axis 2 must be 8"),
            ({"clips": good[0]}, "shape"),
        ]:
            with pytest.raises(InferenceInputError, match=match):
                backend.infer(bad)
    with open_backend(resnet) as backend, pytest.raises(InferenceInputError, match="'dif' has"):
        backend.infer({"rgb": frames((1, 3, 32, 40)), "dif": frames((1, 3, 32, 48))})


def test_infer_needs_the_with_block(r2p1d):
    backend = open_backend(r2p1d)
    with pytest.raises(BackendError, match="with"):
        backend.infer({"clips": frames((1, 3, 8, 32, 40))})


def test_backend_follows_the_suffix_and_can_be_overridden(tmp_path):
    assert backend_name_for("m.onnx") == "onnxruntime"
    assert backend_name_for("m.plan") == backend_name_for("m.ENGINE") == "tensorrt"
    assert backend_name_for("m.bin", "onnxruntime-cpu") == "onnxruntime-cpu"
    with pytest.raises(BackendError, match=r"suffix '\.bin'"):
        backend_name_for("m.bin")
    with pytest.raises(BackendError, match="valid: onnxruntime"):
        backend_name_for("m.onnx", "openvino")
    assert set(BACKENDS) >= {"onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"}


def test_sidecar_must_match_the_file(r2p1d, tmp_path):
    copy = tmp_path / "changed.onnx"
    copy.write_bytes(r2p1d.read_bytes() + b"\0")
    (tmp_path / "changed.onnx.json").write_bytes(r2p1d.with_name(r2p1d.name + ".json").read_bytes())
    with pytest.raises(SidecarError, match="does not match"):
        open_backend(copy)
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(r2p1d.read_bytes())
    with pytest.raises(SidecarError, match="no sidecar"):
        open_backend(lone)
    with pytest.raises(SidecarError, match="'onnx' artifact"):
        open_backend(r2p1d, "tensorrt")


@pytest.mark.skipif(
    "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
    reason="this ONNX Runtime build has CUDA; the refusal is for CPU-only builds",
)
def test_asking_for_gpu_on_a_cpu_build_is_refused_not_run_on_cpu(r2p1d):
    backend = open_backend(r2p1d, "onnxruntime-cuda")
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        backend.__enter__()
    with open_backend(r2p1d, "onnxruntime") as auto:  # auto says what it picked
        assert auto.device == "ONNX Runtime CPUExecutionProvider"


def fake_plan(r2p1d, tmp_path, **trt):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not really a plan")
    info = {"version": "10.9.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0", **trt}
    sidecar = dataclasses.replace(
        read_sidecar(r2p1d), kind="tensorrt", artifact_sha256=sha256_file(plan), tensorrt=info
    )
    write_sidecar(plan, sidecar)
    return plan


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt installed")
def test_tensorrt_missing_names_the_extra(r2p1d, tmp_path):
    backend = open_backend(fake_plan(r2p1d, tmp_path))
    assert isinstance(backend, TensorRTBackend)
    with pytest.raises(BackendUnavailableError, match=r"heke\[trt\]"):
        backend.__enter__()


def test_tensorrt_refuses_other_versions_and_gpus():
    info = {"version": "10.9.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    here = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
    assert compatibility_problems(info, trt_version="10.9.0", gpu=here) == []
    problems = compatibility_problems(info, trt_version="11.1.0", gpu=GpuInfo("NVIDIA A10", "8.6"))
    assert len(problems) == 3
    assert "TensorRT 10.9.0, this machine has 11.1.0" in problems[0]
    assert "'NVIDIA A10'" in problems[1] and "8.6" in problems[2]
    portable = {**info, "version_compatible": True}
    assert compatibility_problems(portable, trt_version="11.1.0", gpu=here) == []
    assert compatibility_problems({**portable, "version": "11.1"}, trt_version="10.9.0", gpu=here)
    assert "does not record" in compatibility_problems({}, trt_version="10.9", gpu=here)[0]


def test_tensorrt_sidecar_without_build_record_is_refused(r2p1d, tmp_path):
    plan = fake_plan(r2p1d, tmp_path)
    write_sidecar(plan, dataclasses.replace(read_sidecar(plan), tensorrt=None))
    with pytest.raises(SidecarError, match="no 'tensorrt' build record"):
        TensorRTBackend(plan)


def test_importing_backends_loads_no_framework():
    code = (
        "import sys, heke_runtime.backends, heke_runtime.scorer, heke_runtime.cli\n"
        "heavy = {'torch', 'tensorrt', 'onnxruntime', 'cuda', 'matplotlib'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_onnxruntime_rejects_bad_options(r2p1d):
    with pytest.raises(BackendError, match="valid: auto, cpu, cuda, tensorrt"):
        OnnxRuntimeBackend(r2p1d, provider="rocm")  # type: ignore[arg-type]


def test_onnxruntime_on_cpu_takes_one_snippet_per_call_without_memory_pattern(r2p1d, monkeypatch):
    import onnxruntime

    # On CPU a batch costs memory, not time, and the memory pattern only adds memory
    # (benchmarks/RESULTS.md, memory); a GPU keeps the caller's default and ORT's options.
    assert open_backend(r2p1d, "onnxruntime-cpu").preferred_batch_size == 1
    assert open_backend(r2p1d, "onnxruntime-cuda").preferred_batch_size is None
    real, seen = onnxruntime.InferenceSession, []

    def spy(*args, sess_options, **kwargs):
        seen.append(sess_options.enable_mem_pattern)
        return real(*args, sess_options=sess_options, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    with open_backend(r2p1d, "onnxruntime-cpu"):
        assert seen == [False]
    gpu_build = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: gpu_build)
    assert open_backend(r2p1d, "onnxruntime").preferred_batch_size is None


PLUGIN = '''
from heke_runtime.backends.onnxruntime import OnnxRuntimeBackend


class EchoBackend(OnnxRuntimeBackend):
    """An ONNX graph stored under another suffix: a backend from outside heke_runtime."""

    name = "echo"
    ARTIFACTS = ".echo"

    @staticmethod
    def claims(artifact):
        return artifact.endswith(".echo")
'''
ENTRY_POINTS = """[heke.backends]
echo = heke_test_plugin:EchoBackend
onnxruntime = heke_test_plugin:EchoBackend
broken = heke_no_such_module:Backend
"""


def test_other_packages_add_backends_through_entry_points(r2p1d, tmp_path):
    site = tmp_path / "site"
    info = site / "heke_test_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: heke-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "heke_test_plugin.py").write_text(PLUGIN)
    engine = tmp_path / "model.echo"
    shutil.copy(r2p1d, engine)
    shutil.copy(r2p1d.with_name(r2p1d.name + ".json"), tmp_path / "model.echo.json")
    video = make_video(tmp_path / "v.mp4", frames=30)
    code = f"""
import sys
sys.path.insert(0, {str(site)!r})
from heke_runtime.backends import BACKENDS, BackendError, backend_name_for, open_backend
from heke_runtime.scorer import Scorer
assert backend_name_for({str(engine)!r}) == "echo"
assert BACKENDS["onnxruntime"].target.startswith("heke_runtime."), "a plugin replaced a built-in"
assert backend_name_for("m.onnx") == "onnxruntime"  # a broken plugin breaks nothing else
try:
    open_backend({str(engine)!r}, "broken")
except BackendError as exc:
    assert "heke_no_such_module" in str(exc), exc
else:
    raise SystemExit("the broken plugin opened")
try:
    backend_name_for("m.bin")
except BackendError as exc:
    assert ".echo" in str(exc), exc  # the plugin's artifacts are listed
echo = Scorer({str(engine)!r}, workers=0).score({str(video)!r})
onnx = Scorer({str(r2p1d)!r}, workers=0).score({str(video)!r})
assert echo.ok and echo.engine.backend == "echo", echo
assert echo.scores == onnx.scores, (echo.scores, onnx.scores)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
