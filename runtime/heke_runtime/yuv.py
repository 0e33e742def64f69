"""Raw yuv420p files (the LIVE-style datasets): frame count, random access, RGB conversion.

The RGB conversion goes through FFmpeg's swscale (via PyAV), which is what the authors'
pipeline used (scikit-video piping the FFmpeg CLI to rgb24); it matches their frames exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np

from heke_runtime.errors import VideoDecodeError


def yuv420p_frame_size(width: int, height: int) -> int:
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise VideoDecodeError(f"yuv420p needs even width and height >= 2, got {width}x{height}")
    return width * height * 3 // 2


def yuv420p_frame_count(path: Path, width: int, height: int) -> int:
    """Frames in a raw file; a size that is not a whole number of frames is an error."""
    size = path.stat().st_size
    frame = yuv420p_frame_size(width, height)
    if size == 0 or size % frame:
        raise VideoDecodeError(
            f"{path}: {size} bytes is not a whole number of {width}x{height} yuv420p frames "
            f"({frame} bytes each); check --size"
        )
    return size // frame


def yuv420p_to_rgb24(data: bytes | np.ndarray, width: int, height: int) -> np.ndarray:
    """One yuv420p frame (Y, U, V planes back to back) to ``[H, W, 3]`` uint8 RGB."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    luma = width * height
    chroma = luma // 4
    planes = (
        buf[:luma].reshape(height, width),
        buf[luma : luma + chroma].reshape(height // 2, width // 2),
        buf[luma + chroma : luma + 2 * chroma].reshape(height // 2, width // 2),
    )
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, array in zip(frame.planes, planes):
        padded = np.zeros((array.shape[0], plane.line_size), dtype=np.uint8)
        padded[:, : array.shape[1]] = array
        plane.update(padded.tobytes())
    return frame.to_ndarray(format="rgb24")


def read_yuv420p_frames(
    path: Path, width: int, height: int, indices: Sequence[int]
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, rgb)`` for each distinct index, in ascending order, seeking directly."""
    frame = yuv420p_frame_size(width, height)
    with path.open("rb") as handle:
        for index in sorted(set(int(i) for i in indices)):
            handle.seek(index * frame)
            data = handle.read(frame)
            if len(data) != frame:
                raise VideoDecodeError(f"{path}: frame {index} is past the end of the file")
            yield index, yuv420p_to_rgb24(data, width, height)


def read_yuv420p_luma(path: Path, width: int, height: int) -> Iterator[np.ndarray]:
    """Yield the Y plane of every frame, ``[H, W]`` uint8, reading one frame at a time."""
    frame = yuv420p_frame_size(width, height)
    luma = width * height
    with path.open("rb") as handle:
        while data := handle.read(frame):
            if len(data) != frame:
                raise VideoDecodeError(f"{path}: the last frame is cut short ({len(data)} bytes)")
            yield np.frombuffer(data[:luma], dtype=np.uint8).reshape(height, width)
