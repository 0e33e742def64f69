"""Peak memory of decoding + preprocessing (``load_clips``) and of ``heke-run`` vs video length.

Target (issue "heke-run", numbers that must hold): peak RSS scoring a generated 1080p
60-second video under 1.5 GB and within 20% of a 10-second one.

    python benchmarks/memory_runtime.py [--workdir DIR] [--fps 25] [--json OUT]
        [--engine ONNX [--run-args "--workers 1" ...] [--sessions]]

Generates 1080p H.264 videos of 10 s and 60 s (the test pattern of tests/videos.py, x264
``ultrafast``; kept in ``--workdir`` for reruns), checks that ``load_clips`` returns the planned
frames, then measures each in a fresh child process: the child reports its own peak RSS
(``RUSAGE_SELF``) and the parent reads ``RUSAGE_CHILDREN`` after it. An import-only child gives
the floor (Python, NumPy, PyAV). Linux reports ``ru_maxrss`` in KiB, and a child's figure starts
at its parent's peak (the high-water mark survives fork and exec), so the parent here imports
only the standard library and runs generation and checking in children too.

With ``--engine`` (a full-size ONNX graph, e.g. from ``heke-export -m r2p1d_HEKE_4
--demo-weights``) it also runs ``heke-run VIDEO -e ENGINE`` with default options (the verdict
is then about it), plus each ``--run-args`` variant; ``--sessions`` times ONNX Runtime on CPU
alone with the session options that decide its memory, for batches of 1 and 4 snippets.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MB = 1536.0
MAX_GROWTH = 0.20

WORKER = """
import json, resource, sys, time
t0 = time.perf_counter()
from heke_runtime.preprocess import load_clips
result = {"seconds": 0.0}
if sys.argv[1] != "--import-only":
    clips, info, plan = load_clips(sys.argv[1])
    result.update(shape=list(clips.shape), frames=info.num_frames, mb_clips=clips.nbytes / 2**20)
result["seconds"] = time.perf_counter() - t0
result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(result))
"""

# heke-run in-process (its console script calls this main), so the child can report its peak.
HEKE_RUN = """
import json, resource, sys, time
t0 = time.perf_counter()
from heke_runtime.cli import main
status = main(sys.argv[1:])
seconds, usage = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
result = {"status": status, "seconds": seconds, "maxrss_mb": usage.ru_maxrss / 1024}
print(json.dumps({**result, "cpu_seconds": usage.ru_utime + usage.ru_stime}))
"""

# One ORT CPU session with explicit options on random 270x480 snippets (a 1080p video's input):
# the first run, then the best of three, in seconds per snippet ("clip"), wall and CPU (all
# threads; steadier than wall time on a shared machine).
SESSION = """
import json, resource, sys, time
import numpy as np, onnxruntime as ort
engine, batch, arena, pattern = sys.argv[1], *(int(a) for a in sys.argv[2:])
options = ort.SessionOptions()
options.enable_cpu_mem_arena, options.enable_mem_pattern = bool(arena), bool(pattern)
session = ort.InferenceSession(engine, options, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((batch, 3, 8, 270, 480), dtype=np.float32)
wall, cpu = [], []
for _ in range(4):
    t0, c0 = time.perf_counter(), time.process_time()
    session.run(None, {"clips": x})
    wall.append((time.perf_counter() - t0) / batch)
    cpu.append((time.process_time() - c0) / batch)
result = {"first_s_clip": wall[0], "s_clip": min(wall[1:]), "cpu_s_clip": min(cpu[1:])}
result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(result))
"""


def make_input(path: Path, seconds: int, fps: int) -> None:
    from tests.videos import make_video

    start = time.perf_counter()
    partial = path.with_suffix(".part.mp4")
    make_video(
        partial, size=(1920, 1080), frames=seconds * fps, fps=fps,
        options={"preset": "ultrafast", "crf": "28"},
    )  # fmt: skip
    partial.rename(path)
    print(f"generated {path.name} in {time.perf_counter() - start:.0f} s")


def check_output(path: Path) -> None:
    """The clip tensor holds the planned frames (each frame shows its own index)."""
    import numpy as np

    from heke_runtime.decode import read_frames
    from heke_runtime.preprocess import frame_to_input, load_clips
    from heke_runtime.sampling import block_scale
    from tests.videos import frame_number

    clips, info, plan = load_clips(path)
    scale = block_scale(info.width, info.height)
    for t, j in ((0, 0), (plan.shape[0] - 1, plan.shape[1] - 1)):
        index, rgb = next(read_frames(path, [plan[t, j]], info=info))
        if frame_number(rgb) != index or not np.array_equal(
            clips[t, :, j], frame_to_input(rgb, scale)
        ):
            raise SystemExit(f"FAILED | {path.name}: snippet {t} frame {j} is not frame {index}")
    print(f"checked {path.name}: {info.num_frames} frames, clips {tuple(clips.shape)}")


def measure(*args: str, worker: str = WORKER) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [sys.executable, "-c", worker, *args], capture_output=True, text=True, check=True, cwd=ROOT
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # The children figure is a maximum over all children so far; it only moves upward.
    result["children_maxrss_mb"] = max(before, after) / 1024
    return result


def in_child(*args: str) -> None:
    """Run a step of this script in a child process, keeping the parent small."""
    subprocess.run([sys.executable, __file__, *args], check=True, cwd=ROOT)


def child_step(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    if argv[0] == "make":
        make_input(Path(argv[1]), int(argv[2]), int(argv[3]))
    else:
        check_output(Path(argv[1]))
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--step":
        return child_step(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "heke_mem")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--engine", type=Path, help="also measure heke-run with this .onnx")
    parser.add_argument(
        "--run-args", action="append", default=[], help="a heke-run variant, e.g. '--workers 1'"
    )
    parser.add_argument("--sessions", action="store_true", help="ORT session options (--engine)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for seconds in (10, 60):
        path = args.workdir / f"pattern_1080p_{seconds}s_{args.fps}fps.mp4"
        if not path.exists():
            in_child("--step", "make", str(path), str(seconds), str(args.fps))
        in_child("--step", "check", str(path))
        inputs[f"{seconds}s"] = path
    figures = {"import_only": measure("--import-only")}
    for label, path in inputs.items():
        figures[label] = measure(str(path))
    verdict_rows = ("10s", "60s")
    if args.engine:
        engine = str(args.engine.resolve())
        verdict_rows = ("heke-run 10s", "heke-run 60s")
        for variant in ["", *args.run_args]:
            for label, path in inputs.items():
                name = " ".join(["heke-run", variant, label]).replace("  ", " ")
                command = [str(path), "-e", engine, *variant.split()]
                figures[name] = row = measure(*command, worker=HEKE_RUN)
                if row["status"] != 0:
                    raise SystemExit(f"FAILED | heke-run {' '.join(command)}: exit {row['status']}")
    for _ in range(2 if args.engine and args.sessions else 0):  # 2 rounds, best of each
        for batch in (1, 4):
            for arena, pattern in ((1, 1), (0, 1), (1, 0), (0, 0)):
                name = f"ORT batch {batch} arena={arena} pattern={pattern}"
                row = measure(engine, str(batch), str(arena), str(pattern), worker=SESSION)
                best = figures.setdefault(name, row)
                figures[name] = {
                    k: (max if k.endswith("_mb") else min)(v, best[k]) for k, v in row.items()
                }
    for label, row in figures.items():
        extra = f" frames={row['frames']} clips={row['mb_clips']:.0f} MB" if "frames" in row else ""
        if "s_clip" in row:
            extra = f" {row['s_clip']:.2f} s/clip (first {row['first_s_clip']:.2f}), "
            extra += f"CPU {row['cpu_s_clip']:.2f} s/clip"
        took = f"{row['seconds']:6.2f} s" if "seconds" in row else ""
        if "cpu_seconds" in row:
            extra = f" (CPU {row['cpu_seconds']:.1f} s)"
        print(f"{label:>36}: peak RSS {row['maxrss_mb']:7.1f} MB  {took}{extra}")
    short, long = (figures[row]["maxrss_mb"] for row in verdict_rows)
    growth = long / short - 1
    ok = long < TARGET_MB and growth <= MAX_GROWTH
    verdict = "PASSED" if ok else "FAILED"
    print(
        f"{verdict} | {verdict_rows[1]} peak {long:.0f} MB < {TARGET_MB:.0f} MB and "
        f"{growth:+.1%} vs 10 s (limit +{MAX_GROWTH:.0%})"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
