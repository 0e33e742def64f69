"""Peak memory of the runtime's decoding + preprocessing (``load_clips``) vs video length.

Target (issue "heke-run", numbers that must hold): peak RSS for a generated 1080p 60-second
video under 1.5 GB and within 20% of a 10-second one.

    python benchmarks/memory_runtime.py [--workdir DIR] [--fps 25] [--json OUT]

Generates 1080p H.264 videos of 10 s and 60 s (the test pattern of tests/videos.py, x264
``ultrafast``; kept in ``--workdir`` for reruns), checks that ``load_clips`` returns the planned
frames, then measures each in a fresh child process: the child reports its own peak RSS
(``RUSAGE_SELF``) and the parent reads ``RUSAGE_CHILDREN`` after it. An import-only child gives
the floor (Python, NumPy, PyAV). Linux reports ``ru_maxrss`` in KiB, and a child's figure starts
at its parent's peak (the high-water mark survives fork and exec), so the parent here imports
only the standard library and runs generation and checking in children too.
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


def measure(arg: str) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [sys.executable, "-c", WORKER, arg], capture_output=True, text=True, check=True, cwd=ROOT
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
    for label, row in figures.items():
        extra = f" frames={row['frames']} clips={row['mb_clips']:.0f} MB" if "frames" in row else ""
        print(f"{label:>12}: peak RSS {row['maxrss_mb']:7.1f} MB  {row['seconds']:6.2f} s{extra}")
    short, long = figures["10s"]["maxrss_mb"], figures["60s"]["maxrss_mb"]
    growth = long / short - 1
    ok = long < TARGET_MB and growth <= MAX_GROWTH
    verdict = "PASSED" if ok else "FAILED"
    print(
        f"{verdict} | 60 s peak {long:.0f} MB < {TARGET_MB:.0f} MB and "
        f"{growth:+.1%} vs 10 s (limit +{MAX_GROWTH:.0%})"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
