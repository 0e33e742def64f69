"""Fast preprocessing: RGB frames to the model's clip tensors, equal to ``heke_ref.preprocess``.

Per frame (docs/ARCHITECTURE.md, "Sampling and preprocessing"): crop to multiples of
``scale``, block-average, divide by 255, ImageNet-normalise, channels first. The block sums are
computed in integers (exact: at most ``255 * scale**2``) by adding whole contiguous rows and
then column groups, which is ~20x faster than the reference's float reshapes; the float32 steps
after the sums are the reference's, in its order, so results agree to the last bit (the
tolerance allows 1e-5).

Each distinct frame is converted once and copied into every snippet slot that uses it; the
output tensor is filled as frames arrive, so :func:`load_clips` holds the output plus one
decoded frame, whatever the video length.

The work splits in two at the integer sums: :func:`load_sums` stops there (one ``uint16``
block-sum frame per distinct frame of the plan: half the float32 input's bytes, less where
snippets share frames) and :func:`inputs_from_sums` finishes it. ``heke-corpus``
ships the sums between the two through Ray's object store; :func:`load_clips` runs both
halves frame by frame. Both use :func:`sums_to_input` and the same assembly, so their inputs
are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from heke_runtime.decode import FrameIndexError, OnDamage, VideoInfo, probe_video, read_frames
from heke_runtime.hdr import DEFAULT_HDR, HdrMode
from heke_runtime.models import model_entry
from heke_runtime.sampling import block_scale, clip_plan, pair_plan
from heke_runtime.spec import IMAGENET_MEAN, IMAGENET_STD

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]

Pairs = tuple[np.ndarray, np.ndarray]


def frame_to_input(rgb: np.ndarray, scale: int) -> np.ndarray:
    """One ``[H, W, 3]`` uint8 RGB frame to a normalised ``[3, H//scale, W//scale]`` float32."""
    return sums_to_input(frame_sums(rgb, scale), scale)


def frame_sums(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Integer sums of the ``scale x scale`` blocks of one ``[H, W, 3]`` uint8 RGB frame,
    ``[H//scale, W//scale, 3]``: uint16 up to scale 16 (255 * 16 * 16 fits), else uint32."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3] uint8 RGB frame, got {rgb.dtype} {rgb.shape}")
    if scale < 1 or rgb.shape[0] < scale or rgb.shape[1] < scale:
        raise ValueError(f"scale {scale} does not fit a {rgb.shape[1]}x{rgb.shape[0]} frame")
    return _block_sums(rgb, scale)


def sums_to_input(sums: np.ndarray, scale: int) -> np.ndarray:
    """:func:`frame_sums`'s ``[h, w, 3]`` to the normalised ``[3, h, w]`` float32 input: the
    reference's float32 steps after block summing, in its order."""
    pooled = sums.transpose(2, 0, 1).astype(np.float32) / np.float32(scale * scale)
    pooled /= np.float32(255.0)
    return (pooled - _MEAN) / _STD


def _block_sums(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Integer sums of ``scale x scale`` blocks, ``[H//scale, W//scale, 3]``."""
    rows, cols = rgb.shape[0] // scale, rgb.shape[1] // scale
    # uint16 holds 255 * 16 * 16; larger blocks (above 8K video) need 32 bits.
    dtype = np.uint16 if scale <= 16 else np.uint32
    by_row = rgb[: rows * scale, : cols * scale].reshape(rows, scale, cols * scale * 3)
    # Adding whole rows (contiguous memory) is what makes this fast; then column groups.
    acc = by_row[:, 0].astype(dtype)
    for k in range(1, scale):
        np.add(acc, by_row[:, k], out=acc)
    by_col = acc.reshape(rows, cols, scale, 3)
    sums = by_col[:, :, 0].copy()
    for k in range(1, scale):
        np.add(sums, by_col[:, :, k], out=sums)
    return sums


def clips_from_frames(frames: Mapping[int, np.ndarray], plan: np.ndarray, scale: int) -> np.ndarray:
    """The r2p1d clip tensor ``[T, 3, N, H//s, W//s]`` from RGB frames keyed by frame index.

    ``plan`` is :func:`heke_runtime.sampling.clip_plan`'s ``[T, N]`` indices; every index in it
    must be in ``frames`` (others are ignored).
    """
    needed = _distinct(plan)
    _require(frames, needed)
    return _assemble_clips(((i, frame_to_input(frames[i], scale)) for i in needed), plan)


def pairs_from_frames(frames: Mapping[int, np.ndarray], plan: np.ndarray, scale: int) -> Pairs:
    """The resnet inputs ``(rgb, dif)``, each ``[T, 3, H//s, W//s]``, from ``pair_plan`` indices.

    ``rgb[i]`` is frame ``plan[i, 0]`` normalised; ``dif[i]`` is normalised frame ``plan[i, 1]``
    minus ``rgb[i]`` (difference of normalised frames, as upstream).
    """
    needed = _distinct(plan)
    _require(frames, needed)
    return _assemble_pairs(((i, frame_to_input(frames[i], scale)) for i in needed), plan)


@overload
def load_clips(
    path: str | Path,
    num_snippets: int | None = None,
    *,
    size: tuple[int, int] | None = None,
    model: Literal["r2p1d_HEKE_4"] = "r2p1d_HEKE_4",
    info: VideoInfo | None = None,
    on_damage: OnDamage = "fail",
    hdr: HdrMode = DEFAULT_HDR,
) -> tuple[np.ndarray, VideoInfo, np.ndarray]: ...
@overload
def load_clips(
    path: str | Path,
    num_snippets: int | None = None,
    *,
    size: tuple[int, int] | None = None,
    model: Literal["resnet_HEKE_4"],
    info: VideoInfo | None = None,
    on_damage: OnDamage = "fail",
    hdr: HdrMode = DEFAULT_HDR,
) -> tuple[Pairs, VideoInfo, np.ndarray]: ...
@overload
def load_clips(
    path: str | Path,
    num_snippets: int | None = None,
    *,
    size: tuple[int, int] | None = None,
    model: str,
    info: VideoInfo | None = None,
    on_damage: OnDamage = "fail",
    hdr: HdrMode = DEFAULT_HDR,
) -> tuple[np.ndarray | Pairs, VideoInfo, np.ndarray]: ...
def load_clips(
    path: str | Path,
    num_snippets: int | None = None,
    *,
    size: tuple[int, int] | None = None,
    model: str = "r2p1d_HEKE_4",
    info: VideoInfo | None = None,
    on_damage: OnDamage = "fail",
    hdr: HdrMode = DEFAULT_HDR,
) -> tuple[np.ndarray | Pairs, VideoInfo, np.ndarray]:
    """Probe, plan, decode only the planned frames and preprocess them: ``(inputs, info, plan)``.

    ``inputs`` is the clip tensor for ``r2p1d_HEKE_4`` and ``(rgb, dif)`` for
    ``resnet_HEKE_4``. ``num_snippets`` defaults to the model's entry in
    :mod:`heke_runtime.models` (12 clips, or 20 frame pairs); pass 10 for the
    authors' in-the-wild setting. ``size`` is needed for raw ``.yuv`` files; ``info`` from an
    earlier :func:`probe_video` of the same file saves probing again. The returned ``info`` is
    the one the plan was made from (a re-probe when decoding disagreed with the index).
    Each frame is pooled as soon as it is decoded and its RGB dropped. Short videos emit
    :class:`heke_runtime.sampling.ShortVideoWarning`. ``on_damage``: ``"fail"`` or
    ``"conceal"`` (see :func:`heke_runtime.decode.probe_video`); ``hdr``: ``"tonemap"`` or
    ``"as-is"`` for HDR videos (see :func:`heke_runtime.decode.read_frames`).
    """
    return _load_with(_inputs, path, num_snippets, size, model, info, on_damage, hdr)


def load_sums(
    path: str | Path,
    num_snippets: int | None = None,
    *,
    size: tuple[int, int] | None = None,
    model: str = "r2p1d_HEKE_4",
    info: VideoInfo | None = None,
    on_damage: OnDamage = "fail",
    hdr: HdrMode = DEFAULT_HDR,
) -> tuple[np.ndarray, VideoInfo, np.ndarray]:
    """:func:`load_clips` stopped at the block sums: ``(sums, info, plan)``, where ``sums``
    is ``[F, H//s, W//s, 3]`` (:func:`frame_sums` of each distinct frame of ``plan``, in
    ascending frame order). :func:`inputs_from_sums` turns it into ``load_clips``'s inputs."""
    return _load_with(_sums, path, num_snippets, size, model, info, on_damage, hdr)


def inputs_from_sums(
    sums: np.ndarray, plan: np.ndarray, info: VideoInfo, model: str = "r2p1d_HEKE_4"
) -> np.ndarray | Pairs:
    """The model inputs of :func:`load_sums`'s result, identical to :func:`load_clips`'s."""
    needed = _distinct(plan)
    if len(sums) != len(needed):
        raise ValueError(f"{len(sums)} block-sum frames for a plan of {len(needed)} frames")
    scale = block_scale(info.width, info.height)
    inputs = ((i, sums_to_input(frame, scale)) for i, frame in zip(needed, sums))
    return _assemble(inputs, plan, model)


def _load_with(
    convert: Callable[[VideoInfo, np.ndarray, str, OnDamage, HdrMode], Any],
    path: str | Path,
    num_snippets: int | None,
    size: tuple[int, int] | None,
    model: str,
    info: VideoInfo | None,
    on_damage: OnDamage,
    hdr: HdrMode = DEFAULT_HDR,
) -> tuple[Any, VideoInfo, np.ndarray]:
    """Probe, plan and ``convert(info, plan, model, on_damage, hdr)`` (which decodes)."""
    entry = model_entry(model)  # validates the model name
    count = entry.num_snippets if num_snippets is None else num_snippets
    if info is None:
        info = probe_video(path, size=size, on_damage=on_damage)
    try:
        plan = _plan(info, count, model)
        out = convert(info, plan, model, on_damage, hdr)
    except FrameIndexError:
        # The demuxed index disagreed with the decoder (or, concealing, damage was met):
        # count by decoding and sample again.
        info = probe_video(path, size=size, count="decode", on_damage=on_damage)
        plan = _plan(info, count, model)
        out = convert(info, plan, model, on_damage, hdr)
    return out, info, plan


def _plan(info: VideoInfo, num_snippets: int, model: str) -> np.ndarray:
    entry = model_entry(model)
    if entry.plan == "pairs":
        return pair_plan(info.num_frames, num_snippets)
    return clip_plan(info.num_frames, num_snippets, entry.frames_per_snippet)


def _inputs(
    info: VideoInfo, plan: np.ndarray, model: str, on_damage: OnDamage, hdr: HdrMode
) -> np.ndarray | Pairs:
    scale = block_scale(info.width, info.height)
    frames = read_frames(info.path, _distinct(plan), info=info, on_damage=on_damage, hdr=hdr)
    return _assemble(((i, frame_to_input(rgb, scale)) for i, rgb in frames), plan, model)


def _sums(
    info: VideoInfo, plan: np.ndarray, model: str, on_damage: OnDamage, hdr: HdrMode
) -> np.ndarray:
    scale = block_scale(info.width, info.height)
    needed = _distinct(plan)
    position = {index: k for k, index in enumerate(needed)}
    sums: np.ndarray | None = None
    filled = 0
    for index, rgb in read_frames(info.path, needed, info=info, on_damage=on_damage, hdr=hdr):
        frame = frame_sums(rgb, scale)
        if sums is None:
            sums = np.empty((len(needed), *frame.shape), frame.dtype)
        sums[position[index]] = frame
        filled += 1
    if sums is None or filled != len(needed):
        raise ValueError(f"decoding gave {filled} of the plan's {len(needed)} frames")
    return sums


def _assemble(
    inputs: Iterable[tuple[int, np.ndarray]], plan: np.ndarray, model: str
) -> np.ndarray | Pairs:
    if model_entry(model).plan == "pairs":
        return _assemble_pairs(inputs, plan)
    return _assemble_clips(inputs, plan)


def _distinct(plan: np.ndarray) -> list[int]:
    return [int(i) for i in np.unique(plan)]


def _require(frames: Mapping[int, np.ndarray], needed: list[int]) -> None:
    missing = [i for i in needed if i not in frames]
    if missing:
        raise ValueError(f"frames missing for plan indices {missing[:10]}")


def _slots(plan: np.ndarray) -> dict[int, list[tuple[int, ...]]]:
    """For each frame index, the plan positions that use it."""
    where: dict[int, list[tuple[int, ...]]] = {}
    for position, index in np.ndenumerate(plan):
        where.setdefault(int(index), []).append(position)
    return where


def _assemble_clips(inputs: Iterable[tuple[int, np.ndarray]], plan: np.ndarray) -> np.ndarray:
    where = _slots(plan)
    clips: np.ndarray | None = None
    for index, frame in inputs:
        if clips is None:
            clips = np.empty((plan.shape[0], 3, plan.shape[1], *frame.shape[1:]), np.float32)
        for t, j in where.pop(index, ()):
            clips[t, :, j] = frame
    _check_filled(clips, where)
    assert clips is not None
    return clips


def _assemble_pairs(inputs: Iterable[tuple[int, np.ndarray]], plan: np.ndarray) -> Pairs:
    where = _slots(plan)
    rgb: np.ndarray | None = None
    later: np.ndarray | None = None
    for index, frame in inputs:
        if rgb is None or later is None:
            rgb = np.empty((plan.shape[0], *frame.shape), np.float32)
            later = np.empty_like(rgb)
        for t, j in where.pop(index, ()):
            (rgb if j == 0 else later)[t] = frame
    _check_filled(rgb, where)
    assert rgb is not None and later is not None
    later -= rgb  # becomes the difference of normalised frames, in place
    return rgb, later


def _check_filled(out: np.ndarray | None, unfilled: dict[int, list[tuple[int, ...]]]) -> None:
    if out is None or unfilled:
        missing = sorted(unfilled)[:10]
        raise ValueError(f"no frame was given for plan indices {missing}")
