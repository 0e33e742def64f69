"""HDR pictures for a model trained on SDR: what is detected, and ``--hdr tonemap``'s curve.

HEKE was trained on SDR video (BT.709/BT.601 transfer, 8 bits). A video whose transfer is PQ
(SMPTE ST 2084, HDR10) or HLG (ARIB STD-B67) is HDR; its colour tags are read from the first
decoded frame (the stream's codec parameters where the frame has none) by
:func:`heke_runtime.decode.probe_video`. Two ways to score it:

``as-is``
    FFmpeg's swscale converts the frame to RGB24 as for any video: the matrix and range are
    honoured, the transfer and primaries are not, so PQ/HLG code values are read as if they
    were BT.709 gamma (a PQ picture then looks dim and flat, its colours washed out).

``tonemap`` (:func:`tonemap_to_sdr`, the NumPy path; the PyAV wheels' FFmpeg has no
``zscale`` (libzimg), without which FFmpeg's ``tonemap`` filter cannot be fed linear light,
and one curve for every build keeps scores reproducible)
    1. swscale converts the frame to 16-bit R'G'B' (``rgb48le``, same matrix, range and
       bicubic chroma as ``as-is``): the non-linear HDR signal E' in [0, 1].
    2. To display light in cd/m2 (nits): PQ by the ST 2084 EOTF; HLG by BT.2100's inverse OETF
       and its OOTF for a 1000-nit display (system gamma 1.2, luminance from BT.2020 weights).
    3. BT.2020 primaries to BT.709 in linear light (BT.2087's matrix) when the video is tagged
       BT.2020; colours outside BT.709 are clipped at 0 per channel (hard gamut clip).
    4. Tone curve: ITU-R BT.2390's EETF (Hermite knee in the PQ domain, black level 0) from
       the source peak to :data:`SDR_WHITE_NITS`, applied to max(R, G, B) and the three
       channels scaled by the same factor (hue kept, no desaturation). Light below the knee
       (28 nits for a 1000-nit source, 12 for 4000) is unchanged; from a 1000-nit source,
       100 nits becomes 69 (RGB24 219), BT.2408's HDR reference white (203 nits) 88 (242),
       the peak 100 (255). The source peak is the stream's
       MaxCLL, else the mastering display's maximum luminance, else :data:`DEFAULT_PEAK_NITS`
       (HLG always uses its 1000-nit nominal display).
    5. SDR encoding: divided by 100 nits, clipped to [0, 1], BT.1886's inverse (gamma 1/2.4,
       the display-referred SDR signal a 100-nit reference display shows as that light),
       rounded to RGB24.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Transfer = Literal["sdr", "pq", "hlg"]
HdrMode = Literal["tonemap", "as-is"]
HDR_CHOICES: tuple[HdrMode, ...] = ("tonemap", "as-is")
DEFAULT_HDR: HdrMode = "tonemap"  # reason: README, "How videos are read"

SDR_WHITE_NITS = 100.0  # BT.1886 / BT.2390 SDR reference white, the tone curve's target
DEFAULT_PEAK_NITS = 1000.0  # PQ without MaxCLL or mastering metadata: the common HDR10 grade
HLG_PEAK_NITS = 1000.0  # BT.2100's nominal HLG display
HLG_GAMMA = 1.2  # BT.2100 HLG system gamma at 1000 nits

# FFmpeg's AVColorTransferCharacteristic and AVColorPrimaries codes.
_TRANSFERS: dict[int, Transfer] = {16: "pq", 18: "hlg"}
_PRIMARIES = {
    1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "film",
    9: "bt2020", 10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "ebu3213",
}  # fmt: skip

# ST 2084 constants.
_M1, _M2 = 2610 / 16384, 2523 / 4096 * 128
_C1, _C2, _C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
# BT.2100 HLG constants and luminance weights (BT.2020 primaries).
_HLG_A = 0.17883277
_HLG_B = 1 - 4 * _HLG_A
_HLG_C = 0.5 - _HLG_A * np.log(4 * _HLG_A)
_BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], dtype=np.float32)
# ITU-R BT.2087: linear BT.2020 RGB to linear BT.709 RGB.
BT2020_TO_BT709 = np.array(
    [[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]],
    dtype=np.float32,
)


def transfer_name(code: int) -> Transfer:
    """``"pq"``, ``"hlg"`` or ``"sdr"`` (any other transfer, tagged or not) for FFmpeg's code."""
    return _TRANSFERS.get(int(code), "sdr")


def primaries_name(code: int) -> str:
    """FFmpeg's name of colour primaries (``"bt709"``, ``"bt2020"``...), or ``"unspecified"``."""
    return _PRIMARIES.get(int(code), "unspecified")


def pq_eotf(signal: np.ndarray) -> np.ndarray:
    """ST 2084: non-linear PQ signal in [0, 1] to display light in nits (0..10000)."""
    e = np.power(np.clip(signal, 0.0, 1.0), 1 / _M2)
    return 10000.0 * np.power(np.maximum(e - _C1, 0.0) / (_C2 - _C3 * e), 1 / _M1)


def pq_inverse_eotf(nits: np.ndarray) -> np.ndarray:
    """ST 2084: display light in nits to the PQ signal in [0, 1]."""
    y = np.power(np.clip(np.asarray(nits) / 10000.0, 0.0, 1.0), _M1)
    return np.power((_C1 + _C2 * y) / (1 + _C3 * y), _M2)


def hlg_inverse_oetf(signal: np.ndarray) -> np.ndarray:
    """BT.2100 HLG: non-linear signal in [0, 1] to normalised scene light in [0, 1]."""
    e = np.clip(signal, 0.0, 1.0)
    high = (np.exp((np.maximum(e, 0.5) - _HLG_C) / _HLG_A) + _HLG_B) / 12
    return np.where(e <= 0.5, e * e / 3, high)


def eetf(nits: np.ndarray, peak: float, target: float = SDR_WHITE_NITS) -> np.ndarray:
    """ITU-R BT.2390 EETF (black levels 0): light up to ``peak`` nits into ``target`` nits."""
    if peak <= target:
        return np.minimum(nits, target)
    source = float(pq_inverse_eotf(np.asarray(peak, np.float64)))
    e1 = np.minimum(pq_inverse_eotf(nits) / source, 1.0)
    max_lum = float(pq_inverse_eotf(np.asarray(target, np.float64))) / source
    knee = 1.5 * max_lum - 0.5
    t = np.clip((e1 - knee) / (1 - knee), 0.0, 1.0)
    t2, t3 = t * t, t * t * t
    # BT.2390's Hermite spline from the knee (slope 1) to max_lum (slope 0) at e1 = 1.
    spline = (2 * t3 - 3 * t2 + 1) * knee + (t3 - 2 * t2 + t) * (1 - knee)
    spline = spline + (-2 * t3 + 3 * t2) * max_lum
    return pq_eotf(np.where(e1 < knee, e1, spline) * source)


def display_light(rgb16: np.ndarray, transfer: Transfer) -> np.ndarray:
    """``[..., 3]`` 16-bit non-linear R'G'B' of a PQ or HLG video to display light in nits."""
    codes = np.arange(65536, dtype=np.float64) / 65535
    if transfer == "pq":
        return pq_eotf(codes).astype(np.float32)[rgb16]
    if transfer != "hlg":
        raise ValueError(f"transfer must be 'pq' or 'hlg', got {transfer!r}")
    scene = hlg_inverse_oetf(codes).astype(np.float32)[rgb16]
    luma = np.maximum(scene @ _BT2020_LUMA, 0.0)[..., None]
    return np.float32(HLG_PEAK_NITS) * np.power(luma, HLG_GAMMA - 1) * scene


def tonemap_to_sdr(
    rgb16: np.ndarray, transfer: Transfer, primaries: str, peak: float | None
) -> np.ndarray:
    """``[H, W, 3]`` uint16 R'G'B' of an HDR frame to SDR BT.709 RGB24 (module docstring)."""
    light = display_light(rgb16, transfer)
    if primaries == "bt2020":
        light = np.maximum(light @ BT2020_TO_BT709.T, 0.0)
    source_peak = HLG_PEAK_NITS if transfer == "hlg" else peak or DEFAULT_PEAK_NITS
    brightest = light.max(axis=-1, keepdims=True)
    mapped = eetf(brightest, source_peak)
    scale = np.divide(mapped, brightest, out=np.zeros_like(brightest), where=brightest > 0)
    sdr = np.clip(light * scale / SDR_WHITE_NITS, 0.0, 1.0)
    return np.rint(np.power(sdr, 1 / 2.4) * 255).astype(np.uint8)


def source_peak(max_cll: int | None, mastering_max: float | None) -> float | None:
    """The peak light the tone curve maps from: MaxCLL, else the mastering display's maximum
    luminance, else None (:data:`DEFAULT_PEAK_NITS` then)."""
    if max_cll:
        return float(max_cll)
    if mastering_max:
        return float(mastering_max)
    return None
