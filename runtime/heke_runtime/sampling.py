"""The authors' frame sampling, as pure functions shared by heke_ref and the runtime.

Upstream (Sissuire/BVQA-HEKE, ``get_test_batch``) computes, for a video of ``F`` frames::

    ts = 2 if F < 480 else 4
    stride = (F - 2*offset - ts*N) / (T - 1)
    pos_i = int(i*stride + offset - 1)          # truncation toward zero
    frame(i, j) = pos_i + ts*j

Short-video policy (ours): when ``F < 2*offset + ts*span`` the stride is negative and for
``F <= 23`` upstream indexes before the first frame (NumPy wraps those to the end of the
video). We keep the formula but clip every index into ``[0, F-1]`` and emit
:class:`ShortVideoWarning`. Whenever upstream's indices are valid they are returned unchanged,
so a one-frame video still yields clips (all of frame 0).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

OFFSET = 10
FRAMES_PER_SNIPPET = 8


class ShortVideoWarning(UserWarning):
    """The video has fewer frames than the authors' sampling was designed for."""


def time_step(num_frames: int) -> int:
    """Frame gap inside a snippet: 2 below 480 frames, else 4 (upstream rule)."""
    return 2 if num_frames < 480 else 4


def _starts(num_frames: int, num_snippets: int, span: int) -> np.ndarray:
    if num_snippets < 2:
        raise ValueError(f"num_snippets must be at least 2, got {num_snippets}")
    stride = (num_frames - OFFSET * 2 - span) / (num_snippets - 1)
    # Same float operations and truncation as upstream's NumPy expression.
    return np.array([int(i * stride + OFFSET - 1) for i in range(num_snippets)], dtype=np.int64)


def _clip_to_video(indices: np.ndarray, num_frames: int, span: int) -> np.ndarray:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if num_frames < OFFSET * 2 + span:
        warnings.warn(
            f"video has {num_frames} frames, fewer than the {OFFSET * 2 + span} the authors' "
            "sampling assumes; snippets overlap and indices are clamped to the video",
            ShortVideoWarning,
            stacklevel=3,
        )
    return np.clip(indices, 0, num_frames - 1)


def clip_plan(
    num_frames: int, num_snippets: int, frames_per_snippet: int = FRAMES_PER_SNIPPET
) -> np.ndarray:
    """Frame indices ``[T, N]`` of the snippets fed to the r2p1d model."""
    ts = time_step(num_frames)
    starts = _starts(num_frames, num_snippets, ts * frames_per_snippet)
    indices = starts[:, None] + ts * np.arange(frames_per_snippet, dtype=np.int64)[None, :]
    return _clip_to_video(indices, num_frames, ts * frames_per_snippet)


def pair_plan(num_frames: int, num_snippets: int = 20) -> np.ndarray:
    """Frame indices ``[T, 2]`` for the resnet model: frame ``pos_i`` and ``pos_i + ts``."""
    ts = time_step(num_frames)
    starts = _starts(num_frames, num_snippets, ts)
    indices = np.stack([starts, starts + ts], axis=1)
    return _clip_to_video(indices, num_frames, ts)


def block_scale(width: int, height: int) -> int:
    """Block-averaging factor: ``ceil(min(W,H)/256)``, minus 1 above 760 px, at least 1."""
    short = min(width, height)
    if short < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    scale = math.ceil(short / 256)
    if short > 760:
        scale -= 1
    return max(scale, 1)


def model_input_size(width: int, height: int) -> tuple[int, int]:
    """``(H, W)`` of the model input after block averaging a ``width x height`` frame."""
    scale = block_scale(width, height)
    return height // scale, width // scale
