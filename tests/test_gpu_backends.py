"""GPU checks (``benchmarks/gpu_check.sh`` runs them with ``HEKE_REQUIRE_GPU=1``).

- The torch CUDA backend in FP16 (the FP16 engine's numerics contract) against its FP32 on 20
  generated videos: per-video blind scores within ``FP16_BLIND_SCORE`` and Spearman rank
  correlation at least ``FP16_MIN_SPEARMAN`` (docs/ARCHITECTURE.md, "Tolerances").
- Its CUDA graphs, pinned staging buffers and private stream.
- The TensorRT backend's CUDA plumbing (pinned buffers, three streams, events, double
  buffering) with real cuda.bindings and a stand-in engine whose "inference" is device-to-device
  copies queued on the compute stream (no TensorRT on the GPU machine).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from heke_export.torch_backend import TorchBackend
from heke_export.verify import generated_inputs
from heke_runtime.backends import tensorrt as trt_backend
from heke_runtime.backends.tensorrt import TensorRTBackend
from heke_runtime.files import sha256_file
from heke_runtime.models import HEAD_NAMES
from heke_runtime.scorer import Scorer
from heke_runtime.sidecar import read_sidecar, write_sidecar
from heke_runtime.tolerances import FP16_BLIND_SCORE, FP16_MIN_SPEARMAN
from tests.test_backends import tiny_engine
from tests.test_tensorrt_api import FEATURES, FakeContext, fake_tensorrt, profile
from tests.videos import pattern

pytestmark = pytest.mark.gpu
BLIND = (*HEAD_NAMES, "ensemble")


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


def test_fp16_blind_scores_track_fp32_on_20_videos(videos):
    full, half = blind_scores(videos, "fp32"), blind_scores(videos, "fp16")
    worst = np.abs(half - full).max(axis=1)
    rho = spearman(full[:, -1], half[:, -1])
    print(f"fp16 vs fp32 on {len(videos)} videos: worst blind diff {worst.max():.4g} "
          f"(video {int(worst.argmax())}), Spearman {rho:.5f}")  # fmt: skip
    assert worst.max() <= FP16_BLIND_SCORE.atol, worst
    assert rho >= FP16_MIN_SPEARMAN


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


def test_tensorrt_runner_pinned_memory_streams_and_events_on_the_gpu(tmp_path, monkeypatch):
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="needs cuda-bindings")
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
