"""Score one (reference, distorted) pair with the four FR metrics, streaming the frames.

Frames go through in step, one pair of Y planes at a time: GMSD and MS-SSIM need only the
current frame, ST-GMSD the last three downscaled frames, ST-RRED the previous frame. Memory is
flat in video length (the per-frame series are a few floats per frame).

Series and pooling (a video's score is the mean of its series; the authors' pooling code is
not published, their ``dataset.py`` reads already-pooled values, and the mean is the plain
reading of their per-frame outputs):

- ``gmsd[i]`` and ``ms_ssim[i]``: frame ``i``;
- ``st_gmsd[i]``: frames ``i, i+1, i+2`` (N-2 values);
- ``st_rred[k]``: frames ``2k`` and ``2k+1`` (floor(N/2) values; an odd last frame is unused,
  their ``extract_strred.m`` pairs frames the same way).

Keys are the heads' names (``heke_runtime.models.HEAD_NAMES``): each head imitates the FR
metric of the same name.

A metric a pair cannot have (:data:`heke_finetune.fr.metrics.MIN_SIDE` and ``MIN_FRAMES``: MS-SSIM's
five levels need 161 px, ST-RRED's pyramid 49 px, ST-GMSD 3 frames) is ``None`` with a warning
that says why; the others are still computed.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from heke_finetune.fr import metrics
from heke_runtime.decode import VideoInfo, probe_video, read_luma
from heke_runtime.errors import HekeError
from heke_runtime.models import HEAD_NAMES

METRICS = HEAD_NAMES  # gmsd, st_gmsd, st_rred, ms_ssim: each head and the metric it imitates
DIRECTION = {
    "gmsd": "higher-is-worse",
    "st_gmsd": "higher-is-worse",
    "st_rred": "higher-is-worse",
    "ms_ssim": "higher-is-better",
}
RATE_SLACK = 0.005  # mean rates of one video encoded twice differ by rounding, not by 0.5%
ALIGN_CHOICES = ("exact", "shortest")
MAX_THREADS = 4  # a frame pair has 4 pyramids and 5 filtered maps per level: more sit idle
Progress = Callable[[int, int], None]  # (frames done, frames in all)


class PairError(HekeError, ValueError):
    """A pair that can't be compared: unreadable, or frames that don't correspond."""


@dataclass
class FrResult:
    """One pair's record; ``scores[m]`` is the mean of ``series[m]``, or None (see warnings)."""

    ref: str
    dist: str
    status: str = "ok"
    error: str | None = None
    frames: int = 0
    width: int = 0
    height: int = 0
    scores: dict[str, float | None] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "dist": self.dist,
            "status": self.status,
            "error": self.error,
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "scores": self.scores,
            "direction": dict(DIRECTION),
            "series": self.series,
            "warnings": self.warnings,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def failed_pair(ref: Path, dist: Path, reason: str) -> FrResult:
    return FrResult(str(ref), str(dist), status="error", error=reason)


# --- opening and matching -----------------------------------------------------------------


def _probe(path: Path, size: tuple[int, int] | None, where: str) -> VideoInfo:
    try:
        return probe_video(path, size=size)
    except HekeError as exc:
        raise PairError(f"{where}: {exc}") from None


def _pair(first: Path, second: Path) -> str:
    return f"pair {first} / {second}"


def open_pair(
    ref: Path, dist: Path, *, size: tuple[int, int] | None = None, align: str = "exact"
) -> tuple[VideoInfo, VideoInfo, int]:
    """Both videos' info and the frame count to compare; :class:`PairError` when they differ."""
    where = _pair(ref, dist)
    ref_info, dist_info = _probe(ref, size, where), _probe(dist, size, where)
    if (ref_info.width, ref_info.height) != (dist_info.width, dist_info.height):
        raise PairError(
            f"{where}: sizes differ ({_size(ref_info)} vs {_size(dist_info)}); FR metrics compare "
            "frames pixel by pixel, so scale one to the other's size first"
        )
    if not _same_rate(ref_info, dist_info):
        raise PairError(
            f"{where}: frame rates differ ({ref_info.fps:.3f} vs {dist_info.fps:.3f} fps), so "
            "frames don't correspond in time; convert one to the other's rate first (--align "
            "only settles frame counts)"
        )
    frames = min(ref_info.num_frames, dist_info.num_frames)
    if ref_info.num_frames != dist_info.num_frames and align != "shortest":
        raise PairError(
            f"{where}: frame counts differ ({ref_info.num_frames} vs {dist_info.num_frames}); "
            f"--align shortest compares the first {frames} frames of both"
        )
    return ref_info, dist_info, frames


def _size(info: VideoInfo) -> str:
    return f"{info.width}x{info.height}"


def _same_rate(first: VideoInfo, second: VideoInfo) -> bool:
    if "raw" in (first.count_method, second.count_method):
        return True  # a raw file's rate is whatever --fps says; nothing to compare
    return math.isclose(first.fps, second.fps, rel_tol=RATE_SLACK)


# --- scoring ------------------------------------------------------------------------------


class _Accumulator:
    """The series of the metrics that fit the frame size, fed one frame pair at a time;
    ``mapper`` runs a frame pair's independent maps (filters, pyramids) side by side."""

    def __init__(self, width: int, height: int, mapper: metrics.Mapper = map) -> None:
        self.mapper = mapper
        self.wanted = {name for name in METRICS if metrics.fits(name, width, height)}
        self.series: dict[str, list[float]] = {name: [] for name in METRICS}
        self._scaled: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=3)
        self._first: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, ref: np.ndarray, dst: np.ndarray) -> None:
        if "gmsd" in self.wanted:
            self._add_gmsd(metrics.downscale(ref), metrics.downscale(dst))
        if "ms_ssim" in self.wanted:
            self.series["ms_ssim"].append(metrics.msssim(ref, dst, self.mapper))
        if "st_rred" in self.wanted:
            self._add_strred(ref, dst)

    def _add_gmsd(self, ref_small: np.ndarray, dst_small: np.ndarray) -> None:
        gm = metrics.gradient_magnitude
        self.series["gmsd"].append(metrics.deviation(gm(ref_small), gm(dst_small)))
        self._scaled.append((ref_small, dst_small))  # ST-GMSD fits wherever GMSD does
        if len(self._scaled) == 3:
            refs = (self._scaled[0][0], self._scaled[1][0], self._scaled[2][0])
            dsts = (self._scaled[0][1], self._scaled[1][1], self._scaled[2][1])
            stgm = metrics.st_gradient_magnitude
            self.series["st_gmsd"].append(metrics.deviation(stgm(refs), stgm(dsts)))

    def _add_strred(self, ref: np.ndarray, dst: np.ndarray) -> None:
        if self._first is None:
            self._first = (ref, dst)
            return
        (ref_first, dst_first), self._first = self._first, None
        bands = list(self.mapper(metrics.subband, (ref_first, ref, dst_first, dst)))
        ref_maps = metrics.rred_maps_of_bands(bands[0], bands[1])
        dst_maps = metrics.rred_maps_of_bands(bands[2], bands[3])
        self.series["st_rred"].append(metrics.strred(ref_maps, dst_maps))


def _frames(info: VideoInfo, count: int) -> Iterator[np.ndarray]:
    for index, luma in enumerate(read_luma(info)):
        if index >= count:
            return
        yield luma.astype(np.float64)


LABELS = {"gmsd": "GMSD", "st_gmsd": "ST-GMSD", "st_rred": "ST-RRED", "ms_ssim": "MS-SSIM"}


def _warnings(frames: int, width: int, height: int) -> list[str]:
    """Why each metric without a value has none (never a silent NaN)."""
    notes = []
    for name in METRICS:
        side, least = metrics.MIN_SIDE[name], metrics.MIN_FRAMES[name]
        if not metrics.fits(name, width, height):
            nan = " (the authors' code gives NaN here)" if name == "ms_ssim" else ""
            notes.append(
                f"{LABELS[name]} not computed: it needs frames of at least {side}x{side}, "
                f"these are {width}x{height}{nan}"
            )
        elif frames < least:
            notes.append(f"{LABELS[name]} not computed: it needs at least {least} frames")
    return notes


def score_pair(
    ref: Path,
    dist: Path,
    *,
    size: tuple[int, int] | None = None,
    align: str = "exact",
    progress: Progress | None = None,
    threads: int | None = None,
) -> FrResult:
    """The pair's record; raises :class:`PairError` (one line naming both files) on failure.
    ``threads``: workers for a frame pair's independent maps (default: up to
    :data:`MAX_THREADS` of the machine's cores); the values do not depend on it."""
    start = time.perf_counter()
    ref_info, dist_info, count = open_pair(ref, dist, size=size, align=align)
    result = FrResult(str(ref), str(dist), frames=count)
    result.width, result.height = ref_info.width, ref_info.height
    workers = threads or min(MAX_THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        acc = _Accumulator(ref_info.width, ref_info.height, pool.map)
        try:
            frames = zip(_frames(ref_info, count), _frames(dist_info, count))
            for done, (a, b) in enumerate(frames):
                acc.add(a, b)
                if progress is not None:
                    progress(done + 1, count)
        except HekeError as exc:
            raise PairError(f"{_pair(ref, dist)}: {exc}") from None
    result.series = acc.series
    result.warnings = _warnings(count, ref_info.width, ref_info.height)
    result.scores = {name: _mean(acc.series[name]) for name in METRICS}
    if align == "shortest" and ref_info.num_frames != dist_info.num_frames:
        result.warnings.append(
            f"frame counts differ ({ref_info.num_frames} vs {dist_info.num_frames}); compared "
            f"the first {count} (--align shortest)"
        )
    result.elapsed_s = time.perf_counter() - start
    return result


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
