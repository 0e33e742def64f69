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
    frame = yuv420p_frame_size(width, height)
    return _whole_frames(path, frame, f"{width}x{height} yuv420p", "check --size")


def _whole_frames(path: Path, frame: int, what: str, hint: str) -> int:
    size = path.stat().st_size
    if size == 0 or size % frame:
        raise VideoDecodeError(
            f"{path}: {size} bytes is not a whole number of {what} frames ({frame} bytes "
            f"each); {hint}"
        )
    return size // frame


def _frames_at(path: Path, frame: int, indices: Sequence[int]) -> Iterator[tuple[int, bytes]]:
    """``(index, bytes)`` of each distinct frame asked for, in ascending order, seeking."""
    with path.open("rb") as handle:
        for index in sorted(set(int(i) for i in indices)):
            handle.seek(index * frame)
            data = handle.read(frame)
            if len(data) != frame:
                raise VideoDecodeError(f"{path}: frame {index} is past the end of the file")
            yield index, data


def _every_frame(path: Path, frame: int) -> Iterator[bytes]:
    """Each frame's bytes in order, one frame in memory at a time."""
    with path.open("rb") as handle:
        while data := handle.read(frame):
            if len(data) != frame:
                raise VideoDecodeError(f"{path}: the last frame is cut short ({len(data)} bytes)")
            yield data


def luma_plane(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane as yuv420p gives it, ``[H, W]`` uint8: other formats go through swscale
    first (an 8-bit Y plane stays as it is; higher depths are reduced to 8 bits)."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(frame.height, plane.line_size)
    return rows[:, : frame.width].copy()


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
    for index, data in _frames_at(path, yuv420p_frame_size(width, height), indices):
        yield index, yuv420p_to_rgb24(data, width, height)


def read_yuv420p_luma(path: Path, width: int, height: int) -> Iterator[np.ndarray]:
    """Yield the Y plane of every frame, ``[H, W]`` uint8, reading one frame at a time."""
    luma = width * height
    for data in _every_frame(path, yuv420p_frame_size(width, height)):
        yield np.frombuffer(data[:luma], dtype=np.uint8).reshape(height, width)


# --- raw files in other planar formats (heke-run --pix-fmt) -----------------------------------

RAW_DEFAULT = "yuv420p"


class RawSize(tuple[int, int]):
    """``(width, height)`` of a raw file's frames that also names their pixel format.

    A tuple, so every place that passes a raw ``size`` along keeps working; the reader that
    opens the file (``decode.probe_video``) asks :func:`raw_pix_fmt`. Any planar format FFmpeg
    knows (one component per plane: ``yuv420p``, ``yuv422p``, ``yuv444p``, ``yuv420p10le``,
    ``gray``, ...), stored as ffmpeg's rawvideo muxer writes it: planes back to back, rows
    unpadded, 2 bytes per sample above 8 bits.
    """

    pix_fmt: str

    def __new__(cls, width: int, height: int, pix_fmt: str = RAW_DEFAULT) -> RawSize:
        check_raw_pix_fmt(pix_fmt)
        size = super().__new__(cls, (width, height))
        size.pix_fmt = pix_fmt
        return size

    def __getnewargs__(self) -> tuple[int, int, str]:
        return self[0], self[1], self.pix_fmt  # pickling (Ray workers) keeps the format


def raw_pix_fmt(size: tuple[int, int] | None) -> str:
    return getattr(size, "pix_fmt", RAW_DEFAULT)


def check_raw_pix_fmt(pix_fmt: str) -> None:
    """``ValueError`` for a name FFmpeg does not know or a packed/semi-planar format."""
    try:
        fmt = av.VideoFormat(pix_fmt)
    except ValueError:
        raise ValueError(f"--pix-fmt {pix_fmt}: not a pixel format FFmpeg knows") from None
    planes = [c.plane for c in fmt.components]
    if len(set(planes)) != len(planes):
        raise ValueError(
            f"--pix-fmt {pix_fmt}: heke reads raw planar formats only (one component per "
            "plane: yuv420p, yuv422p, yuv444p, yuv420p10le, gray...); convert it with ffmpeg"
        )


def _plane_shapes(width: int, height: int, pix_fmt: str) -> list[tuple[int, int, int]]:
    """``(rows, samples per row, bytes per sample)`` of each plane, as rawvideo stores it."""
    fmt = av.VideoFormat(pix_fmt, width, height)
    return [(c.height, c.width, 1 if c.bits <= 8 else 2) for c in fmt.components]


def raw_frame_size(width: int, height: int, pix_fmt: str) -> int:
    if pix_fmt == RAW_DEFAULT:
        return yuv420p_frame_size(width, height)
    return sum(rows * cols * depth for rows, cols, depth in _plane_shapes(width, height, pix_fmt))


def raw_frame_count(path: Path, width: int, height: int, pix_fmt: str) -> int:
    """Frames in a raw file; a size that is not a whole number of frames is an error."""
    if pix_fmt == RAW_DEFAULT:
        return yuv420p_frame_count(path, width, height)
    frame = raw_frame_size(width, height, pix_fmt)
    what = f"{width}x{height} {pix_fmt}"
    return _whole_frames(path, frame, what, "check --size and --pix-fmt")


def raw_to_frame(data: bytes, width: int, height: int, pix_fmt: str) -> av.VideoFrame:
    """One raw frame's bytes as a PyAV frame (rows padded to FFmpeg's line size)."""
    frame = av.VideoFrame(width, height, pix_fmt)
    offset = 0
    for plane, (rows, cols, depth) in zip(frame.planes, _plane_shapes(width, height, pix_fmt)):
        size = rows * cols * depth
        array = np.frombuffer(data, np.uint8, size, offset).reshape(rows, cols * depth)
        padded = np.zeros((rows, plane.line_size), dtype=np.uint8)
        padded[:, : cols * depth] = array
        plane.update(padded.tobytes())
        offset += size
    return frame


def read_raw_frames(
    path: Path, width: int, height: int, pix_fmt: str, indices: Sequence[int]
) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`read_yuv420p_frames` for any planar format (to RGB through swscale)."""
    if pix_fmt == RAW_DEFAULT:
        yield from read_yuv420p_frames(path, width, height, indices)
        return
    for index, data in _frames_at(path, raw_frame_size(width, height, pix_fmt), indices):
        picture = raw_to_frame(data, width, height, pix_fmt)
        # bicubic, as decode does for container frames: it matters once chroma is scaled
        yield index, picture.to_ndarray(format="rgb24", interpolation="BICUBIC")


def read_raw_luma(path: Path, width: int, height: int, pix_fmt: str) -> Iterator[np.ndarray]:
    """The Y plane of every frame as yuv420p gives it (uint8; other formats via swscale)."""
    if pix_fmt == RAW_DEFAULT:
        yield from read_yuv420p_luma(path, width, height)
        return
    for data in _every_frame(path, raw_frame_size(width, height, pix_fmt)):
        yield luma_plane(raw_to_frame(data, width, height, pix_fmt))
