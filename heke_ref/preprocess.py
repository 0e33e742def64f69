"""Reference sampling and preprocessing, written plainly (speed does not matter here).

Per frame: RGB uint8 -> float32 -> block average by ``scale`` (crop to multiples first)
-> /255 -> ImageNet normalisation, exactly as upstream (``AveragePooling`` then torchvision
``ToTensor`` and ``Normalize``). The frame-index plans live in :mod:`heke_runtime.sampling`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from heke_runtime.sampling import block_scale, clip_plan, pair_plan
from heke_runtime.spec import IMAGENET_MEAN, IMAGENET_STD
from heke_runtime.yuv import read_yuv420p_frames, yuv420p_frame_count

FrameSource = Callable[[int], np.ndarray]  # frame index -> [H, W, 3] uint8 RGB


def block_average(image: np.ndarray, kernel: int) -> np.ndarray:
    """Upstream ``AveragePooling``: crop to multiples of ``kernel``, sum along W then H."""
    height, width, channels = image.shape
    rows, cols = height // kernel, width // kernel
    cropped = image[: rows * kernel, : cols * kernel]
    summed_w = cropped.reshape(rows * kernel * cols, kernel, channels).sum(axis=1)
    by_column = summed_w.reshape(rows * kernel, cols, channels).transpose(1, 0, 2)
    summed_h = by_column.reshape(cols * rows, kernel, channels).sum(axis=1)
    return summed_h.reshape(cols, rows, channels).transpose(1, 0, 2) / (kernel * kernel)


def normalize(image: np.ndarray) -> np.ndarray:
    """``ToTensor`` (HWC -> CHW, no rescale for float input) then ``Normalize`` in float32."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    return (chw - mean) / std


def frame_to_input(rgb: np.ndarray, scale: int) -> np.ndarray:
    """One RGB uint8 frame to a normalised ``[3, H//scale, W//scale]`` float32 array."""
    pooled = block_average(rgb.astype(np.float32), scale) / 255.0
    return normalize(pooled.astype(np.float32))


def reference_clips(
    frame: FrameSource, num_frames: int, width: int, height: int, num_snippets: int = 12
) -> np.ndarray:
    """The r2p1d clip tensor ``[T, 3, 8, H//s, W//s]`` for a video read by ``frame``."""
    scale = block_scale(width, height)
    plan = clip_plan(num_frames, num_snippets)
    clips = np.zeros(
        (plan.shape[0], 3, plan.shape[1], height // scale, width // scale), dtype=np.float32
    )
    for i, row in enumerate(plan):
        for j, index in enumerate(row):
            clips[i, :, j] = frame_to_input(frame(int(index)), scale)
    return clips


def reference_pairs(
    frame: FrameSource, num_frames: int, width: int, height: int, num_snippets: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """The resnet inputs: normalised frames ``pos_i`` and ``frame(pos_i+ts) - frame(pos_i)``."""
    scale = block_scale(width, height)
    plan = pair_plan(num_frames, num_snippets)
    rgb = np.stack([frame_to_input(frame(int(a)), scale) for a, _ in plan])
    later = np.stack([frame_to_input(frame(int(b)), scale) for _, b in plan])
    return rgb, later - rgb


def decode_all(path: Path) -> list[np.ndarray]:
    """Every frame of a container file as RGB uint8, through FFmpeg's rgb24 conversion as
    upstream read them (fine for short clips; the runtime streams instead)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def yuv_frame_source(path: Path, width: int, height: int) -> FrameSource:
    """Random access to a raw yuv420p file, one frame per call."""

    def frame(index: int) -> np.ndarray:
        return next(read_yuv420p_frames(path, width, height, [index]))[1]

    return frame


def clips_from_yuv(path: str | Path, width: int, height: int, num_snippets: int = 12) -> np.ndarray:
    path = Path(path)
    count = yuv420p_frame_count(path, width, height)
    return reference_clips(
        yuv_frame_source(path, width, height), count, width, height, num_snippets
    )
