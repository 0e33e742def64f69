"""The authors' four FR metrics, one frame (or frame pair) at a time, in NumPy.

Definitions follow their MATLAB in BVQA-HEKE ``WELL-Set/fr_vqa_for_weak_labels`` (read, not
copied): frames are Y planes of yuv420p as float64 on 0–255.

- GMSD: on frames downscaled by 2 (2x2 average), the gradient magnitude with 3x3 Prewitt-like
  kernels (``[1 0 -1]/3`` over 3 rows), the similarity map ``(2ab + 255) / (a² + b² + 255)``
  and its standard deviation (N-1) per frame. Their constant is 255, not GMSD's usual 170.
- ST-GMSD: the same on 3x3x3 spatio-temporal gradients (``±1/9`` planes in x, y and t) of
  three consecutive downscaled frames: one value per frame from the third on.
- MS-SSIM: 5 levels, weights ``0.0448 0.2856 0.3001 0.2363 0.1333``, an 11x11 Gaussian
  (sigma 1.5) over the valid region, ``C1 = (0.01·255)²``, ``C2 = (0.03·255)²``; between
  levels a 2x2 mean with the last row/column repeated, then every other pixel. Contrast-
  structure at levels 1–4, full SSIM at level 5. Frames under 161 px on a side have nothing
  left at level 5 (the authors' code gives NaN): :data:`MIN_SIDE` says so instead.
- ST-RRED (the SpEED-style "optimised" variant of their ``extract_strred.m``): frames go in
  pairs (1,2), (3,4)...; each frame's subband is band 4 (one orientation) of an ``sp5``
  steerable pyramid three octaves down, edges ``reflect1`` (``pyrtools``' ``corrDn``, the
  maintained port of their ``matlabPyrTools``); local variances and entropies over 3x3 blocks
  with neural noise 0.1 give the spatial and temporal information maps, and a pair scores
  ``mean|ΔS| · mean|ΔT|`` between reference and distorted.

Arithmetic that decides parity mirrors theirs (variances as ``E[x²] - µ²``, eigenvalue clean-up
of the block covariance, ``log`` vs ``log2``); tests/test_fr_parity.py checks every per-frame
value against their code run under Octave.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

import numpy as np

# ``map`` or an executor's ``map``: the filters and the pyramid's C code release the GIL, so
# independent maps of one frame pair run on several cores (heke_finetune.fr.pairs).
Mapper = Callable[[Callable[[np.ndarray], np.ndarray], Iterable[np.ndarray]], Iterable[np.ndarray]]

GMSD_C = 255.0  # their stability constant, for both GMSD and ST-GMSD
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
STRRED_BLOCK = 3
STRRED_NOISE = 0.1  # neural noise variance
STRRED_OCTAVES = 3  # lowpass-and-decimate steps before the band (their Nscales - 1 - ht)
STRRED_BAND = 3  # 0-based column of sp5's bfilts: their band 4 maps to orientation 4 of 6
LOG_2PI_E = float(np.log(2 * np.pi * np.e))  # natural log, as in their est_params.m


def downscale(frame: np.ndarray) -> np.ndarray:
    """Their 2x2 average then every other pixel: ``floor(H/2) x floor(W/2)``."""
    h, w = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
    # Four strided views added: 8x faster than a reshaped sum, exact on integer frames.
    top, bottom = frame[0:h:2], frame[1:h:2]
    return (top[:, 0:w:2] + bottom[:, 0:w:2] + top[:, 1:w:2] + bottom[:, 1:w:2]) / 4


def gradient_magnitude(frame: np.ndarray) -> np.ndarray:
    """Valid 3x3 gradients: ``(H-2) x (W-2)``."""
    rows = frame[:-2] + frame[1:-1] + frame[2:]
    cols = frame[:, :-2] + frame[:, 1:-1] + frame[:, 2:]
    gx = (rows[:, :-2] - rows[:, 2:]) / 3
    gy = (cols[:-2] - cols[2:]) / 3
    return np.sqrt(gx**2 + gy**2)


def st_gradient_magnitude(frames: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Valid 3x3x3 gradients of three consecutive frames: ``(H-2) x (W-2)``."""
    volume = frames[0] + frames[1] + frames[2]  # summed over t, for the x and y planes
    rows = volume[:-2] + volume[1:-1] + volume[2:]
    cols = volume[:, :-2] + volume[:, 1:-1] + volume[:, 2:]
    gx = (rows[:, :-2] - rows[:, 2:]) / 9
    gy = (cols[:-2] - cols[2:]) / 9
    gt = (_box3(frames[0]) - _box3(frames[2])) / 9
    return np.sqrt(gx**2 + gy**2 + gt**2)


def _box3(frame: np.ndarray) -> np.ndarray:
    rows = frame[:-2] + frame[1:-1] + frame[2:]
    return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]


def deviation(ref_gm: np.ndarray, dst_gm: np.ndarray) -> float:
    """GMSD's pooling: the standard deviation (N-1, as MATLAB's ``std2``) of the similarity."""
    similarity = (2 * ref_gm * dst_gm + GMSD_C) / (ref_gm**2 + dst_gm**2 + GMSD_C)
    return float(np.std(similarity, ddof=1))


# --- MS-SSIM -------------------------------------------------------------------------------


def _msssim_min_side() -> int:
    """Smallest side with a valid 11x11 window at level 5 (161: 161→81→41→21→11)."""
    side = SSIM_WINDOW
    for _ in range(len(MSSSIM_WEIGHTS) - 1):
        side = 2 * side - 1
    return side


# Smallest frame side and frame count each metric can be computed on.
MIN_SIDE = {
    "gmsd": 8,  # downscaled by 2, a valid 3x3 gradient leaves a 2x2 map (std needs 2 values)
    "st_gmsd": 8,
    "st_rred": 49,  # the band's 7x7 filter needs 7 px three octaves down: ceil(side/8) >= 7
    "ms_ssim": _msssim_min_side(),
}
MIN_FRAMES = {"gmsd": 1, "st_gmsd": 3, "st_rred": 2, "ms_ssim": 1}


EXTRA_MODULES = ("scipy", "pyrtools")  # what heke[fr] installs


def missing_extra() -> list[str]:
    """The modules of ``heke[fr]`` that are not installed."""
    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]


def fits(metric: str, width: int, height: int) -> bool:
    return min(width, height) >= MIN_SIDE[metric]


@cache
def _gaussian() -> np.ndarray:
    x = np.arange(SSIM_WINDOW) - (SSIM_WINDOW - 1) / 2
    taps = np.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return taps / taps.sum()  # the 2-D window is the outer product of these, sum 1


def _filter_valid(image: np.ndarray) -> np.ndarray:
    """MATLAB's ``filter2(win, image, 'valid')`` with the separable Gaussian window."""
    from scipy.ndimage import correlate1d  # heke[fr]; heke-fr checks it is there first

    taps, edge = _gaussian(), SSIM_WINDOW // 2
    out = correlate1d(image, taps, axis=0, mode="constant")
    out = correlate1d(out, taps, axis=1, mode="constant")
    return out[edge:-edge, edge:-edge]


def _ssim_means(ref: np.ndarray, dst: np.ndarray, mapper: Mapper) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure of one level: their formulas, the same operations
    in the same order, worked in place (a 1080p map is 16 MB; fresh ones cost page faults)."""
    maps = (ref, dst, ref * ref, dst * dst, ref * dst)
    mu1, mu2, sigma1, sigma2, sigma12 = mapper(_filter_valid, maps)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1 -= mu1_sq  # E[x²] - µ², as theirs
    sigma2 -= mu2_sq
    sigma12 -= mu12
    structure = np.multiply(sigma12, 2, out=sigma12)
    structure += SSIM_C2  # 2·σ12 + C2
    spread = np.add(sigma1, sigma2, out=sigma1)
    spread += SSIM_C2  # σ1² + σ2² + C2
    cs = float(np.divide(structure, spread, out=sigma2).mean())
    luminance = np.multiply(mu12, 2, out=mu12)
    luminance += SSIM_C1  # 2·µ1µ2 + C1
    luminance *= structure
    power = np.add(mu1_sq, mu2_sq, out=mu1_sq)
    power += SSIM_C1  # µ1² + µ2² + C1
    power *= spread
    return float(np.divide(luminance, power, out=luminance).mean()), cs


def _halve(image: np.ndarray) -> np.ndarray:
    """2x2 mean at each even position, the last row/column repeated past the edge."""
    padded = np.pad(image, ((0, image.shape[0] % 2), (0, image.shape[1] % 2)), mode="edge")
    return downscale(padded)


def msssim(ref: np.ndarray, dst: np.ndarray, mapper: Mapper = map) -> float:
    """5-level MS-SSIM of one frame; the caller checks :func:`fits` first."""
    product = 1.0
    for level, weight in enumerate(MSSSIM_WEIGHTS):
        ssim, cs = _ssim_means(ref, dst, mapper)
        last = level == len(MSSSIM_WEIGHTS) - 1
        product *= (ssim if last else cs) ** weight
        if not last:
            ref, dst = _halve(ref), _halve(dst)
    return product


# --- ST-RRED -------------------------------------------------------------------------------


@cache
def _pyramid_filters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from pyrtools.pyramids.filters import steerable_filters  # heke[fr], like scipy

    sp5 = steerable_filters("sp5_filters")
    side = round(float(np.sqrt(sp5["bfilts"].shape[0])))
    # MATLAB's reshape(bfilts(:, b), 7, 7) fills columns first.
    band = sp5["bfilts"][:, STRRED_BAND].reshape(side, side, order="F")
    return sp5["lo0filt"], sp5["lofilt"], band


def subband(frame: np.ndarray) -> np.ndarray:
    """The one steerable-pyramid band ST-RRED reads, at 1/8 of the frame's size."""
    from pyrtools import corrDn

    lo0, lo, band = _pyramid_filters()
    image = corrDn(frame, lo0, "reflect1")
    for _ in range(STRRED_OCTAVES):
        image = corrDn(image, lo, "reflect1", step=(2, 2))
    return np.asarray(corrDn(image, band, "reflect1"), dtype=np.float64)


def _windows(band: np.ndarray, step: int) -> np.ndarray:
    """``[9, N]``: each 3x3 window (overlapping when step is 1) as a column."""
    b, h, w = STRRED_BLOCK, band.shape[0], band.shape[1]
    rows = [
        band[v : h - b + v + 1 : step, u : w - b + u + 1 : step].ravel()
        for u in range(b)
        for v in range(b)
    ]
    return np.stack(rows)


def _clean_covariance(band: np.ndarray) -> np.ndarray:
    """Block covariance with negative eigenvalues zeroed and the trace kept."""
    samples = _windows(band, 1)
    centred = samples - samples.mean(axis=1, keepdims=True)
    cov = centred @ centred.T / samples.shape[1]
    values, vectors = np.linalg.eigh(cov)
    positive = values * (values > 0)
    kept = positive.sum()
    values = positive * values.sum() / (kept + (kept == 0))
    return (vectors * values) @ vectors.T


def local_entropy(band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Their ``est_params``: per 3x3 block, the variance scale ``ss`` and the entropy."""
    b = STRRED_BLOCK
    h, w = band.shape[0] // b * b, band.shape[1] // b * b
    band = band[:h, :w]
    cov = _clean_covariance(band)
    eigen = np.linalg.eigvalsh(cov)
    if eigen.max() > 0:
        blocks = _windows(band, b)
        ss = (np.linalg.inv(cov) @ blocks * blocks).sum(axis=0) / (b * b)
        ss = ss.reshape(h // b, w // b)
    else:
        ss = np.zeros((h // b, w // b))
    entropy = np.zeros_like(ss)
    for value in eigen[eigen > 0]:
        entropy += np.log2(ss * value + STRRED_NOISE) + LOG_2PI_E
    return ss, entropy


@dataclass(frozen=True)
class RredMaps:
    """One video's spatial and temporal information maps for a frame pair."""

    spatial: np.ndarray
    temporal: np.ndarray


def rred_maps(first: np.ndarray, second: np.ndarray) -> RredMaps:
    """The information maps of frames ``(first, second)`` of one video."""
    return rred_maps_of_bands(subband(first), subband(second))


def rred_maps_of_bands(band: np.ndarray, next_band: np.ndarray) -> RredMaps:
    """:func:`rred_maps` from the two frames' subbands (computed elsewhere, in parallel)."""
    ss, entropy = local_entropy(band)
    ss_diff, entropy_diff = local_entropy(band - next_band)
    scale = np.log2(1 + ss)
    return RredMaps(entropy * scale, entropy_diff * scale * np.log2(1 + ss_diff))


def strred(ref: RredMaps, dst: RredMaps) -> float:
    """A pair's ST-RRED: mean |ΔS| times mean |ΔT| (NaNs left out, as their nanmean)."""
    spatial = np.nanmean(np.abs(ref.spatial - dst.spatial))
    temporal = np.nanmean(np.abs(ref.temporal - dst.temporal))
    return float(spatial * temporal)
