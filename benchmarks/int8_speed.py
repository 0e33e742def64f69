"""INT8 Q/DQ graph vs the FP32 graph on ONNX Runtime's CPU provider: model-stage speed in
interleaved rounds, and which kernels ran (ONNX Runtime's profile).

Three graphs: FP32, the INT8 graph heke-export writes (ReLUs in zero points), and its
symmetric TensorRT form (heke_export.qdq_forms), run here to show why ONNX Runtime is not
given that form: it fuses ``DQ -> Conv -> Q`` but not ``DQ -> Conv -> Relu -> Q``, so most
convolutions of that form run in float.

    python benchmarks/int8_speed.py                      # full-size demo weights, 136x240
    python benchmarks/int8_speed.py --tiny --size 64x80  # the tiny test model

Speed does not depend on the calibrated values, so the INT8 graph here is calibrated quickly
(min-max, two snippets per default clip); accuracy is ``heke-export --verify``'s job.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from heke_export.int8 import Calibration, int8_from_weights
from heke_export.onnx_export import onnx_from_weights
from heke_export.qdq_forms import tensorrt_form
from heke_ref.checkpoint import demo_weights


def cpu_line() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "")
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return f"{name or platform.processor()}; ISA: {' '.join(f for f in wanted if f in flags)}"


def kernel_summary(path: Path, clip: np.ndarray, folder: Path) -> dict[str, list[float]]:
    """op -> [count, total ms] of one profiled run."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / path.stem)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"clips": clip})
    summary: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            entry = summary[event["args"]["op_name"]]
            entry[0] += 1
            entry[1] += event["dur"] / 1e3
    return dict(summary)


def interleaved(paths: list[Path], clip: np.ndarray, rounds: int) -> list[float]:
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in paths]
    for session in sessions:
        session.run(None, {"clips": clip})  # warm-up
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for session, spent in zip(sessions, times):
            start = time.perf_counter()
            session.run(None, {"clips": clip})
            spent.append(time.perf_counter() - start)
            time.sleep(0.3)  # let spinning thread pools settle
    return [float(np.median(t)) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--size", default="136x240", help="model input HxW")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    weights = demo_weights("r2p1d_HEKE_4", tiny=args.tiny)
    print(f"CPU: {cpu_line()}; ONNX Runtime {ort.__version__}")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        fp32 = onnx_from_weights(weights, folder, "fp32")
        quick = Calibration(method="minmax", snippets=2)
        int8 = int8_from_weights(weights, folder, quick, echo=lambda _: None)
        symmetric = folder / "symmetric.int8.onnx"
        onnx.save(tensorrt_form(onnx.load(int8)), symmetric)
        clip = np.random.default_rng(0).standard_normal((1, 3, 8, height, width)).astype(np.float32)
        for path in (fp32, int8, symmetric):
            ops = kernel_summary(path, clip, folder)
            top = sorted(ops.items(), key=lambda kv: -kv[1][1])[:6]
            print(
                f"profile {path.name}: " + ", ".join(f"{k} x{c} {ms:.0f} ms" for k, (c, ms) in top)
            )
        seconds = interleaved([fp32, int8, symmetric], clip, args.rounds)
    print(
        f"model [1,3,8,{height},{width}]{' tiny' if args.tiny else ''}: FP32 {seconds[0]:.3f} s, "
        f"INT8 {seconds[1]:.3f} s ({seconds[0] / seconds[1]:.2f}x), INT8 symmetric "
        f"{seconds[2]:.3f} s ({seconds[0] / seconds[2]:.2f}x) "
        f"(median of {args.rounds} interleaved rounds)"
    )


if __name__ == "__main__":
    main()
