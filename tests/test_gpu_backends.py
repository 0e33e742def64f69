"""GPU checks (``benchmarks/gpu_check.sh`` runs the ``gpu``-marked ones with
``HEKE_REQUIRE_GPU=1``).

- Every CUDA path of the torch backend (fp32 and fp16, each with CUDA graphs and eager) row
  by row, every head and feature, against ``heke_ref`` on the CPU, on odd batches that run
  padded: a bug both precisions share cannot hide behind an fp16-vs-fp32 comparison.
- The torch CUDA backend in FP16 (the FP16 engine's numerics contract) against its FP32 on 20
  generated videos: per-video blind scores within ``FP16_BLIND_SCORE`` and Spearman rank
  correlation at least ``FP16_MIN_SPEARMAN`` (docs/ARCHITECTURE.md, "Tolerances").
- Its CUDA graphs, pinned staging buffers and private stream.
- The TensorRT backend's CUDA plumbing (pinned buffers, three streams, events, double
  buffering) with real cuda.bindings and a stand-in engine whose "inference" is device-to-device
  copies queued on the compute stream (no TensorRT on the GPU machine).

Unmarked tests run the per-row check itself on the CPU (torch-cpu backend), and show that it
fails on the outputs a padding or ordering bug gives.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from heke_export.torch_backend import TorchBackend
from heke_export.verify import compare_rows, generated_inputs, torch_outputs
from heke_ref.checkpoint import demo_weights, load_model
from heke_runtime.backends import tensorrt as trt_backend
from heke_runtime.backends.tensorrt import TensorRTBackend
from heke_runtime.files import sha256_file
from heke_runtime.models import HEAD_NAMES
from heke_runtime.scorer import Scorer
from heke_runtime.sidecar import read_sidecar, write_sidecar
from heke_runtime.tolerances import (
    FP16_BLIND_SCORE,
    FP16_MIN_SPEARMAN,
    FP16_ROW_FEATURES,
    FP16_ROW_HEADS,
    TORCH_FP32,
    Tolerance,
)
from tests.conftest import require
from tests.test_backends import tiny_engine
from tests.test_tensorrt_api import FEATURES, FakeContext, fake_tensorrt, profile
from tests.videos import pattern

BLIND = (*HEAD_NAMES, "ensemble")
TINY = "demo:r2p1d_HEKE_4-tiny"
# (rows, height, width): the torch backend pads 5 rows to 8 and 3 to 4 (padded_batch), the
# height is odd, and the third batch replays the first one's captured graph with new clips.
ROW_BATCHES = ((5, 45, 80), (3, 135, 240), (5, 45, 80))
ROW_TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "fp32": {"heads": TORCH_FP32, "features": TORCH_FP32},
    "fp16": {"heads": FP16_ROW_HEADS, "features": FP16_ROW_FEATURES},
}
Arrays = dict[str, np.ndarray]


def noisy_video(path: Path, sigma: float, seed: int, size=(64, 48), frames=40) -> Path:
    """The test pattern with Gaussian noise of ``sigma`` grey levels, stored losslessly."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv444p"
        for i in range(frames):
            noisy = pattern(i, size) + rng.normal(0.0, sigma, (size[1], size[0], 3))
            frame = np.clip(noisy, 0, 255).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("noise")
    return [noisy_video(folder / f"sigma{3 * k:02d}.mkv", 3.0 * k, seed=k) for k in range(20)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(x)).astype(np.float64) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def blind_scores(videos, precision: str) -> np.ndarray:
    options = {"precision": precision}
    with Scorer("demo:r2p1d_HEKE_4", backend="torch-cuda", backend_options=options,
                batch_size=12) as scorer:  # fmt: skip
        results = list(scorer.score_many(videos))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return np.array([[r.scores[name] for name in BLIND] for r in results])


@pytest.mark.gpu
def test_fp16_blind_scores_track_fp32_on_20_videos(videos):
    full, half = blind_scores(videos, "fp32"), blind_scores(videos, "fp16")
    worst = np.abs(half - full).max(axis=1)
    rho = spearman(full[:, -1], half[:, -1])
    print(f"fp16 vs fp32 on {len(videos)} videos: worst blind diff {worst.max():.4g} "
          f"(video {int(worst.argmax())}), Spearman {rho:.5f}")  # fmt: skip
    assert worst.max() <= FP16_BLIND_SCORE.atol, worst
    assert rho >= FP16_MIN_SPEARMAN


@pytest.mark.gpu
def test_cuda_graphs_pinned_staging_and_stream():
    inputs = generated_inputs("r2p1d_HEKE_4", 3, 32, 40)
    with TorchBackend("demo:r2p1d_HEKE_4-tiny", device="cuda", max_graphs=2) as backend:
        assert backend.sidecar.precision == "fp16" and "CUDA graphs" in backend.device
        first, again = backend.infer(inputs), backend.infer(inputs)
        np.testing.assert_array_equal(first["heads"], again["heads"])  # replayed graph
        assert [dict(k)["clips"][0] for k in backend.captured_shapes] == [4]  # padded 3 -> 4
        captured = next(iter(backend._graphs.values()))
        assert all(t.is_pinned() for t in (*captured.staged.values(), *captured.pinned))
        default = torch.cuda.default_stream().cuda_stream
        assert backend._stream is not None and backend._stream.cuda_stream != default
        for hw in ((48, 64), (24, 32)):
            backend.infer(generated_inputs("r2p1d_HEKE_4", 1, *hw))
        assert len(backend.captured_shapes) == 2  # least recently used dropped
    with TorchBackend("demo:r2p1d_HEKE_4-tiny", device="cuda", cuda_graphs=False) as plain:
        eager = plain.infer(inputs)
    np.testing.assert_allclose(first["heads"], eager["heads"], atol=1e-3)


def test_a_missing_module_skips_or_fails_naming_itself_under_heke_require_gpu(monkeypatch):
    monkeypatch.delenv("HEKE_REQUIRE_GPU", raising=False)
    with pytest.raises(pytest.skip.Exception, match="heke_no_such_module is missing"):
        require("heke_no_such_module", "a test needs it")
    monkeypatch.setenv("HEKE_REQUIRE_GPU", "1")
    with pytest.raises(pytest.fail.Exception, match="HEKE_REQUIRE_GPU=1 but heke_no_such_m"):
        require("heke_no_such_module", "a test needs it")
    assert require("numpy", "present").__name__ == "numpy"


# --------------------------------------------------------------------------- row by row


@pytest.fixture(scope="module")
def row_cases() -> list[tuple[Arrays, Arrays]]:
    """Seeded clips of ROW_BATCHES with the reference's outputs: ``heke_ref`` on the CPU in
    float64 and in its own NCDHW layout, so the oracle shares no padding, channels-last or
    staging code with the torch backend, and float32's own error does not count."""
    model = load_model(demo_weights("r2p1d_HEKE_4", tiny=True)).double()
    cases = []
    for seed, (rows, height, width) in enumerate(ROW_BATCHES, start=1):
        inputs = generated_inputs("r2p1d_HEKE_4", rows, height, width, seed=seed)
        cases.append((inputs, torch_outputs(model, inputs)))
    return cases


def assert_rows_match(label: str, actual: Arrays, expected: Arrays, precision: str) -> None:
    report = compare_rows(label, actual, expected, ROW_TOLERANCES[precision])
    assert report, report.text()


def test_torch_cpu_rows_match_the_reference_and_a_padding_row_in_place_fails(row_cases):
    """The per-row check on the CPU: torch-cpu's rows pass; the rows a padding bug would
    return (a zero padding clip first, every clip one row down, the last dropped) fail on
    every row and output, even at the looser FP16 tolerances."""
    inputs, expected = row_cases[1]
    clips = inputs["clips"]
    with TorchBackend(TINY, device="cpu", precision="fp32") as backend:
        outputs = [backend.infer(case) for case, _ in row_cases]
        padded = backend.infer({"clips": np.concatenate([np.zeros_like(clips[:1]), clips])})
    for (_, want), got in zip(row_cases, outputs):
        assert_rows_match("torch-cpu fp32", got, want, "fp32")
    shifted = {name: value[: len(clips)] for name, value in padded.items()}
    report = compare_rows("padding row first", shifted, expected, ROW_TOLERANCES["fp16"])
    assert len(report.results) == 2 * len(clips) and not any(report.results), report.text()


def test_rows_out_of_order_fail_the_row_check(row_cases):
    """Any two clips' rows differ by more than the FP16 tolerances: rows swapped or repeated
    fail on every row and output."""
    for _, expected in row_cases:
        rolled = {name: np.roll(value, 1, axis=0) for name, value in expected.items()}
        report = compare_rows("rows rolled by one", rolled, expected, ROW_TOLERANCES["fp16"])
        assert report.results and not any(report.results), report.text()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("cuda_graphs", [True, False], ids=["graphs", "eager"])
def test_cuda_rows_match_the_cpu_reference(row_cases, precision, cuda_graphs):
    """Each CUDA path against the CPU reference, row by row: a bug fp16 and fp32 share
    (padding, channels-last, staging, a stale graph replay) fails here, where comparing the
    two precisions with each other would pass it."""
    backend = TorchBackend(TINY, device="cuda", precision=precision, cuda_graphs=cuda_graphs)
    with backend:
        assert ("CUDA graphs" in backend.device) == cuda_graphs
        outputs = [backend.infer(inputs) for inputs, _ in row_cases]
        shapes = sorted(dict(key)["clips"] for key in backend.captured_shapes)
    assert shapes == [(4, 3, 8, 135, 240), (8, 3, 8, 45, 80)]  # padded; the first reused
    label = f"torch-cuda {precision} {'graphs' if cuda_graphs else 'eager'}"
    for (_, expected), actual in zip(row_cases, outputs):
        assert_rows_match(label, actual, expected, precision)


class CopyContext(FakeContext):
    """The CPU tests' stand-in execution context (profile checks included) whose "inference"
    copies the first values of each clip to ``heads`` and ``features`` with device-to-device
    copies on the given stream."""

    def execute_async_v3(self, stream):
        from cuda.bindings import runtime as cudart

        batch, *clip = self.shapes["clips"]
        row = int(np.prod(clip)) * 4
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        handle = cudart.cudaStream_t(stream)
        for b in range(batch):
            for name, width in (("heads", 4), ("features", FEATURES)):
                dst = self.addresses[name] + b * width * 4
                err, *_ = cudart.cudaMemcpyAsync(
                    dst, self.addresses["clips"] + b * row, width * 4, kind, handle
                )
                assert err == cudart.cudaError_t.cudaSuccess, err
        return True


def copy_model(clips: np.ndarray) -> dict[str, np.ndarray]:
    flat = clips.reshape(clips.shape[0], -1)
    return {"heads": flat[:, :4], "features": flat[:, :FEATURES]}


@pytest.mark.gpu
def test_tensorrt_runner_pinned_memory_streams_and_events_on_the_gpu(tmp_path, monkeypatch):
    cudart = require("cuda.bindings.runtime", "the runner's CUDA calls run on real cuda-bindings")
    gpu = trt_backend.Cuda(cudart).gpu(0)
    trt = fake_tensorrt(None, [profile((16, 16), (128, 128), 4)], context_type=CopyContext)
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: trt)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"stand-in plan")
    info = {"version": trt.__version__, "gpu_name": gpu.name,
            "compute_capability": gpu.compute_capability}  # fmt: skip
    sidecar = read_sidecar(tiny_engine("r2p1d_HEKE_4"))
    write_sidecar(plan, dataclasses.replace(
        sidecar, kind="tensorrt", artifact_sha256=sha256_file(plan), tensorrt=info))  # fmt: skip
    rng = np.random.default_rng(0)
    batches = [
        {"clips": rng.standard_normal((b, 3, 8, 32, 48)).astype(np.float32)}
        for b in (4, 4, 3, 6, 1)
    ]
    with TensorRTBackend(plan) as backend:
        outputs = list(backend.infer_many(iter(batches)))
        single = backend.infer(batches[0])
    for batch, out in zip(batches, outputs):
        expected = copy_model(batch["clips"])
        np.testing.assert_array_equal(out["heads"], expected["heads"])
        np.testing.assert_array_equal(out["features"], expected["features"])
    np.testing.assert_array_equal(single["heads"], outputs[0]["heads"])
