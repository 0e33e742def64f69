"""Single-stage measurements; each checks its outputs before it is timed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heke_bench.inputs import BenchError, frame_like, videos_module
from heke_runtime.parity import compare
from heke_runtime.tolerances import (
    BF16_BLIND_SCORE,
    FP16_BLIND_SCORE,
    INT8_BLIND_SCORE,
    ONNX_FP32,
    PREPROCESS,
)

# Pause between interleaved calls: thread pools (ONNX Runtime, OpenMP, BLAS) spin-wait for a
# while after a call and would slow the next framework's call.
SETTLE_S = 0.3


def timed(run: Callable[[], Any], *, min_time: float, min_runs: int = 3) -> list[float]:
    """Seconds of each call of ``run``, repeated until ``min_time`` and ``min_runs`` are met."""
    times: list[float] = []
    while len(times) < min_runs or sum(times) < min_time:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def sgemm(n: int = 2048, min_time: float = 3.0) -> dict[str, float]:
    """float32 matrix product with NumPy's BLAS on every core: this run's CPU roofline."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    check = a[:64] @ b
    if not np.allclose(check, a[:64].astype(np.float64) @ b, rtol=1e-3, atol=1e-2):
        raise BenchError("sgemm gives wrong results")
    times = timed(lambda: a @ b, min_time=min_time)
    best = min(times)
    return {"n": n, "best_s": best, "gflops": 2 * n**3 / best / 1e9}


def model_gflop(model: str, tiny: bool, height: int, width: int) -> float:
    """GFLOP of one clip (one frame pair for resnet), counted by torch on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from heke_ref.registry import create_model
    from heke_runtime.models import model_entry

    entry = model_entry(model)
    with torch.device("meta"):
        net = create_model(model, tiny=tiny)
        inputs = [torch.zeros(entry.input_shape(1, height, width)) for _ in entry.inputs]
    with FlopCounterMode(display=False) as counter:
        net(*inputs)
    return float(counter.get_total_flops()) / 1e9


@dataclass(frozen=True)
class BackendSpec:
    """One backend and precision to measure: ``label`` like ``onnxruntime-cpu fp32``."""

    label: str
    engine: str
    backend: str
    precision: str
    options: dict[str, Any]


def reference_outputs(weights: Any, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """torch float32 reference (heke_ref) outputs of ``weights`` for ``inputs`` on the CPU."""
    import torch

    from heke_ref.checkpoint import load_model
    from heke_runtime.models import model_entry

    net = load_model(weights)
    with torch.inference_mode():
        out = net(*(torch.from_numpy(inputs[n]) for n in model_entry(weights.model).inputs))
    return {"heads": out.heads.numpy(), "features": out.features.numpy()}


def parity(spec: BackendSpec, out: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """fp32: heads and features within ONNX_FP32; fp16/bf16/int8: heads within the blind-score
    tolerance (one clip: its heads are its blind scores)."""
    if spec.precision == "fp32":
        result = compare(spec.label, out, expected, ONNX_FP32)
        worst = max(o.max_abs for o in result.outputs)
        return {"passed": result.passed, "max_abs": worst, "line": result.summary()}
    lower = {"bf16": BF16_BLIND_SCORE, "int8": INT8_BLIND_SCORE}
    atol = lower.get(spec.precision, FP16_BLIND_SCORE).atol
    diff = float(np.abs(out["heads"] - expected["heads"]).max())
    passed = diff <= atol and bool(np.isfinite(out["features"]).all())
    verdict = "PASSED" if passed else "FAILED"
    line = f"{verdict} | {spec.label} vs torch fp32 | heads max_abs={diff:.3g} atol={atol}"
    return {"passed": passed, "max_abs": diff, "line": line}


def model_throughputs(
    specs: list[BackendSpec],
    check: tuple[dict[str, np.ndarray], dict[str, Any]],
    shape: tuple[str, int, int, int],
    gflop: float,
    min_time: float,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Check one clip per backend against the reference, then time them in interleaved
    rounds (one call of each per round, with one sgemm), so that a machine whose load changes
    during the run slows every figure alike. Median call time -> clips/s and GFLOP/s; the
    sgemm median is the roofline of the same rounds."""
    from contextlib import ExitStack

    from heke_runtime.backends import open_backend

    model, batch, height, width = shape
    inputs = frame_like(model, batch, height, width, seed=1)
    a, b = (
        np.random.default_rng(i).standard_normal((2048, 2048), dtype=np.float32) for i in (2, 3)
    )
    with ExitStack() as stack:
        backends = [
            stack.enter_context(open_backend(s.engine, s.backend, **s.options)) for s in specs
        ]
        verdicts = [parity(s, be.infer(check[0]), check[1]) for s, be in zip(specs, backends)]
        for backend in backends:
            backend.infer(inputs)  # warm-up (graph capture, autotuning)
        calls = [*(lambda be=be: be.infer(inputs) for be in backends), lambda: a @ b]
        times: list[list[float]] = [[] for _ in calls]
        while len(times[0]) < 3 or sum(map(sum, times[:-1])) < min_time * len(specs):
            for call, spent in zip(calls, times):
                time.sleep(SETTLE_S)
                spent.extend(timed(call, min_time=0.0, min_runs=1))
        devices = [be.device for be in backends]
    rows = []
    for spec, verdict, device, spent in zip(specs, verdicts, devices, times):
        clips_s = batch / float(np.median(spent))
        rows.append({
            "label": spec.label, "device": device, "batch": batch, "parity": verdict,
            "calls": len(spent), "clips_per_s": clips_s, "s_per_clip": 1 / clips_s,
            "gflops": clips_s * gflop, "call_s_min_max": [min(spent), max(spent)],
        })  # fmt: skip
    roofline = {
        "n": 2048,
        "gflops": 2 * 2048**3 / float(np.median(times[-1])) / 1e9,
        "rounds": len(times[-1]),
    }
    return rows, roofline


def decode_fps(path: Path, min_time: float) -> dict[str, Any]:
    """Frames/s of plain sequential decoding (FFmpeg threads), and with RGB conversion of
    every frame; checked: the frame count and the index drawn in the first and last frames."""
    import av

    from heke_runtime.decode import probe_video, read_frames

    info = probe_video(path)
    count = info.num_frames
    ends = dict(read_frames(path, [0, count - 1], info=info, seek="never"))
    videos = videos_module()
    if [videos.frame_number(ends[i]) for i in (0, count - 1)] != [0, (count - 1) % 4096]:
        raise BenchError(f"{path.name}: decoded frames are not the frames written")

    def decode(rgb: bool) -> None:
        seen = 0
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if rgb:
                    frame.to_ndarray(format="rgb24")
                seen += 1
        if seen != count:
            raise BenchError(f"{path.name}: decoded {seen} frames, the index has {count}")

    plain = timed(lambda: decode(False), min_time=min_time, min_runs=2)
    rgb = timed(lambda: decode(True), min_time=min_time, min_runs=1)
    return {
        "video": path.name,
        "frames": count,
        "size": f"{info.width}x{info.height}",
        "decode_fps": count * len(plain) / sum(plain),
        "decode_rgb_fps": count * len(rgb) / sum(rgb),
    }


def preprocess_fps(path: Path, min_time: float) -> dict[str, Any]:
    """Frames/s of the fast block-average + normalise step, checked against heke_ref's."""
    from heke_ref.preprocess import block_average, normalize
    from heke_runtime.decode import probe_video, read_frames
    from heke_runtime.preprocess import frame_to_input
    from heke_runtime.sampling import block_scale

    info = probe_video(path)
    frames = [rgb for _, rgb in read_frames(path, range(8), info=info)]
    scale = block_scale(info.width, info.height)
    fast = frame_to_input(frames[0], scale)
    slow = normalize(block_average(frames[0].astype(np.float32), scale) / 255.0)
    worst = float(np.abs(fast - slow).max())
    if worst > PREPROCESS.atol:
        raise BenchError(f"fast preprocessing differs from heke_ref by {worst:.3g}")
    times = timed(lambda: [frame_to_input(f, scale) for f in frames], min_time=min_time)
    return {
        "frame": f"{info.width}x{info.height}",
        "scale": scale,
        "max_abs_vs_reference": worst,
        "frames_per_s": len(frames) * len(times) / sum(times),
    }


def seek_vs_sequential(path: Path, snippets: int = 12) -> dict[str, Any]:
    """The sampled frames of a long video with seeks and with full sequential decoding:
    identical frames required, then each timed once (a long decode is its own average)."""
    from heke_runtime.decode import probe_video, read_frames
    from heke_runtime.sampling import clip_plan

    start = time.perf_counter()
    info = probe_video(path)
    probe_s = time.perf_counter() - start
    wanted = np.unique(clip_plan(info.num_frames, snippets))
    results: dict[str, Any] = {}
    frames: dict[str, dict[int, np.ndarray]] = {}
    for mode in ("auto", "never"):
        start = time.perf_counter()
        frames[mode] = dict(read_frames(path, wanted, info=info, seek=mode))
        results[f"{mode}_s"] = time.perf_counter() - start
    same = frames["auto"].keys() == frames["never"].keys() and all(
        np.array_equal(frames["auto"][i], frames["never"][i]) for i in frames["never"]
    )
    if not same:
        raise BenchError(f"{path.name}: frames read with seeks differ from sequential decoding")
    return {
        "video": path.name,
        "frames": info.num_frames,
        "duration_s": info.duration_s,
        "size": f"{info.width}x{info.height}",
        "sampled_frames": len(wanted),
        "identical_frames": same,
        "probe_s": probe_s,
        "seek_s": results["auto_s"],
        "sequential_s": results["never_s"],
        "speedup": results["never_s"] / results["auto_s"],
        "speedup_with_probe": (results["never_s"] + probe_s) / (results["auto_s"] + probe_s),
    }
