"""The torch backend on the CPU: engine spellings, precision choice, float32 parity with the
reference model, BF16 within its tolerance, and scoring through the Scorer and heke-run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heke_export.torch_backend import TorchBackend, cpu_bf16_support, parse_demo, resolve
from heke_export.verify import generated_inputs
from heke_ref.checkpoint import demo_weights, load_model, save_checkpoint
from heke_runtime.backends import (
    BackendError,
    BackendUnavailableError,
    backend_name_for,
    open_backend,
)
from heke_runtime.cli import main
from heke_runtime.files import sha256_file
from heke_runtime.models import HEAD_NAMES
from heke_runtime.parity import compare, compare_output
from heke_runtime.scorer import Scorer
from heke_runtime.tolerances import (
    BF16_BLIND_SCORE,
    BF16_TINY_FEATURES,
    RUNTIME_VS_REFERENCE,
    TORCH_FP32,
)
from tests.test_backends import tiny_engine
from tests.videos import make_video

TINY = "demo:r2p1d_HEKE_4-tiny"
needs_bf16 = pytest.mark.skipif(
    cpu_bf16_support() is None, reason="this CPU has neither AVX-512 BF16 nor AMX"
)


def reference(model_name, inputs):
    model = load_model(demo_weights(model_name, tiny=True))
    with torch.no_grad():
        out = model(*(torch.from_numpy(inputs[n]) for n in sorted(inputs, reverse=True)))
    return {"heads": out.heads.numpy(), "features": out.features.numpy()}


def test_engine_spellings_choose_the_torch_backend():
    assert parse_demo("demo:r2p1d_HEKE_4-tiny") == ("r2p1d_HEKE_4", True)
    assert parse_demo("demo:resnet_HEKE_4") == ("resnet_HEKE_4", False)
    for engine in ("demo:r2p1d_HEKE_4", "weights/r2p1d_model_HEKE4.pkl", "model.pt", "m.PTH"):
        assert backend_name_for(engine) == "torch"
    with pytest.raises(BackendError, match=r"valid: demo:r2p1d_HEKE_4, demo:resnet_HEKE_4"):
        TorchBackend("demo:vgg16", device="cpu")


def test_precision_and_device_are_resolved_or_refused():
    assert resolve("auto", "auto", True, None) == ("cuda", "fp16")
    assert resolve("auto", "auto", False, "AVX-512 BF16") == ("cpu", "bf16")
    assert resolve("cpu", "auto", True, None) == ("cpu", "fp32")
    with pytest.raises(BackendUnavailableError, match="refusing to run on the CPU"):
        resolve("cuda", "auto", False, "AMX")
    with pytest.raises(BackendError, match="needs a CPU with AVX-512 BF16 or AMX"):
        resolve("cpu", "bf16", False, None)
    with pytest.raises(BackendError, match="precision fp16 on cpu"):
        resolve("cpu", "fp16", False, "AMX")
    with pytest.raises(BackendError, match="valid: auto, fp32, fp16, bf16"):
        resolve("cpu", "int8", False, None)
    assert cpu_bf16_support(frozenset({"avx512f", "amx_bf16"})) == "AMX"
    assert cpu_bf16_support(frozenset({"avx2"})) is None


def test_fp32_matches_the_reference_model():
    inputs = generated_inputs("r2p1d_HEKE_4", 3, 27, 45)
    with open_backend(TINY, device="cpu", precision="fp32") as backend:
        assert "CPU: float32, channels-last" in backend.device
        out = backend.infer(inputs)
    result = compare("torch fp32 vs reference", out, reference("r2p1d_HEKE_4", inputs), TORCH_FP32)
    assert result, result.report()


def test_resnet_runs_with_two_inputs():
    inputs = generated_inputs("resnet_HEKE_4", 2, 48, 64)
    with open_backend("demo:resnet_HEKE_4-tiny", device="cpu", precision="fp32") as backend:
        assert sorted(backend.input_names) == ["dif", "rgb"]
        out = backend.infer(inputs)
    result = compare("torch fp32 resnet", out, reference("resnet_HEKE_4", inputs), TORCH_FP32)
    assert result, result.report()


@needs_bf16
def test_bf16_blind_scores_are_within_tolerance_of_fp32():
    inputs = generated_inputs("r2p1d_HEKE_4", 12, 64, 80, seed=4)
    with open_backend(TINY, device="cpu") as backend:  # auto: bf16 on this CPU
        assert backend.sidecar.precision == "bf16" and "bfloat16 convolutions" in backend.device
        out = backend.infer(inputs)
    expected = reference("r2p1d_HEKE_4", inputs)
    rows = compare_output("features", out["features"], expected["features"], BF16_TINY_FEATURES)
    assert rows.passed, rows  # row by row: a row out of place fails
    blind = np.abs(out["heads"].mean(axis=0) - expected["heads"].mean(axis=0))
    assert blind.max() <= BF16_BLIND_SCORE.atol, blind


def test_scorer_runs_demo_engines_and_matches_onnx_runtime(tmp_path):
    videos = [make_video(tmp_path / f"{i}.mp4", frames=30 + 10 * i) for i in range(3)]
    with Scorer(TINY, backend_options={"precision": "fp32"}, workers=2, batch_size=8) as scorer:
        assert scorer.sidecar.kind == "torch" and scorer.sidecar.demo_weights
        results = list(scorer.score_many(videos))
    with Scorer(tiny_engine("r2p1d_HEKE_4"), workers=0) as scorer:
        expected = [scorer.score(v) for v in videos]
    for got, want in zip(results, expected):
        assert got.ok and got.engine.backend == "torch" and got.engine.precision == "fp32"
        for name in (*HEAD_NAMES, "ensemble"):
            assert got.scores[name] == pytest.approx(
                want.scores[name], abs=RUNTIME_VS_REFERENCE.atol
            )


def test_cpu_prefers_one_snippet_per_call():
    assert Scorer(TINY, backend_options={"precision": "fp32"}).batch_size == 1
    assert Scorer(TINY, backend_options={"precision": "fp32"}, batch_size=3).batch_size == 3


def test_heke_run_takes_a_demo_engine(tmp_path, capsys):
    video = make_video(tmp_path / "a.mp4", frames=30)
    out = tmp_path / "r.jsonl"
    code = main([str(video), "-e", TINY, "-o", str(out), "--workers", "1"])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "torch" in err and "DEMO weights" in err and out.read_text().count("\n") == 1


@pytest.mark.slow  # writes and reads the full-size model (130 MB)
def test_authors_checkpoints_load_and_are_recognised(tmp_path):
    weights = demo_weights("r2p1d_HEKE_4")
    path = tmp_path / "r2p1d_model_HEKE4.pkl"
    save_checkpoint(weights, path, module_prefix=True)  # DataParallel-style keys
    backend = TorchBackend(path, device="cpu", precision="fp32")
    side = backend.sidecar
    assert (side.model, side.kind, side.precision) == ("r2p1d_HEKE_4", "torch", "fp32")
    assert side.weights_sha256 == sha256_file(path) and side.outputs["features"] == ["B", 2880]
    with backend:
        out = backend.infer(generated_inputs("r2p1d_HEKE_4", 1, 32, 32))
    assert out["heads"].shape == (1, 4) and out["features"].shape == (1, 2880)
