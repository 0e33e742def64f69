"""Video decoding for the runtime: PyAV (FFmpeg) for container files, raw planar YUV for ``.yuv``.

Frame numbering
    Frame ``i`` is the ``i``-th picture FFmpeg's decoder outputs: display (presentation) order,
    B-frame reordering undone, frames that an MP4/MOV edit list hides left out, every frame of
    a variable-frame-rate video counted once (frames are counted, not resampled to a rate).
    That is the sequence the authors' readers (FFmpeg CLI / OpenCV) delivered.

Frame count (exact)
    ``probe_video`` demuxes the whole file once without decoding (no pixel work, so it costs
    about as much as reading the file) and indexes the presentation timestamps of the video
    packets, skipping empty packets and packets the demuxer marks as discarded (edit lists).
    For every codec and container we tested, one packet is one displayed frame and the sorted
    timestamps are the display order (``tests/test_decode_count.py`` compares this with a full
    decode). ``probe_video`` counts by decoding instead (``count_method == "decode"``) when a
    packet has no timestamp (raw ``.h264``/``.hevc`` streams), two packets share one, or the
    stream does not start with a keyframe (a transport stream cut in mid-GOP: the decoder drops
    the frames before the first keyframe); ``count="decode"`` forces it.
    The index is checked while decoding at no extra cost: ``read_frames`` compares each
    decoded frame's timestamp with the index and raises :class:`FrameIndexError` on the first
    disagreement (a field-coded stream with two packets per frame, frames the decoder drops).
    :func:`heke_runtime.preprocess.load_clips` then probes again with ``count="decode"`` and
    samples again. ``read_frames`` checks every frame it decodes, up to the last one asked for.

Seeking
    With a trusted index (``count_method == "demux"``) ``read_frames`` may jump over frames
    it does not need: it seeks to the last keyframe shown at or before a requested frame when
    that skips at least :data:`SEEK_MIN_SKIP` frames, decodes from there and recognises each
    frame by its timestamp in the index. The seek offset is the keyframe's presentation time
    (MP4, Matroska), then its decoding time (MPEG-TS/PS search by that); a seek that lands past
    the frame falls back to decoding from the start. After a seek, frames shown before the
    keyframe (open-GOP leading pictures, whose references were skipped) may come out damaged
    or not at all; they are never requested from that seek, so they are dropped, not reported.
    The frames equal those of sequential decoding (``tests/test_decode_seek.py``: B-frames,
    open GOPs, VFR, edit lists, MP4/MOV/MKV/WebM/TS).

Rotation
    The display matrix (MP4/MOV ``tkhd``, Matroska projection, or an H.264/HEVC orientation SEI,
    as FFmpeg attaches it to the first decoded frame) is applied like the FFmpeg CLI's
    autorotate: frames are turned to display orientation, mirrored when the matrix mirrors,
    angles rounded to the nearest multiple of 90 degrees. ``VideoInfo.rotation`` is the
    clockwise angle applied (0, 90, 180, 270; a phone's portrait clip is usually 90),
    ``mirrored`` says a horizontal flip followed it, and width/height are the displayed size.
    The sample aspect ratio is not applied (the authors' frames were not resampled either).

Colour
    ``frame.to_ndarray(format="rgb24")``: FFmpeg's swscale with the CLI's default ``bicubic``
    flag (it only matters where chroma is interpolated by the scaler, e.g. 10-bit input;
    8-bit yuv420p gives the same bytes under every flag). Colour tags on the frame (matrix,
    range) are honoured; untagged yuv420p is BT.601 limited range, as in the authors' data.
    Higher bit depths are reduced to 8 bits by that conversion.
    HDR (PQ or HLG transfer, :mod:`heke_runtime.hdr`): ``VideoInfo.transfer``/``primaries``
    come from the first frame's tags (else the stream's), ``peak_nits`` from its MaxCLL or
    mastering-display side data. ``read_frames(hdr="tonemap")`` (the default) maps such frames
    to SDR BT.709 with the NumPy curve documented in :mod:`heke_runtime.hdr`; ``hdr="as-is"``
    converts them like any other frame (swscale ignores the transfer). Either way one
    :class:`HdrWarning` says the video is HDR and what was done.

Damaged files (policy: a damaged video is an error, never a silent partial score)
    A file that FFmpeg cannot open, has no video stream or no decodable frame, a packet the
    demuxer flags as corrupt, a decoder error, a frame the decoder flags as corrupt (error
    concealment), or a Matroska/WebM file whose packets end well before the duration its header
    declares (truncated) raises :class:`VideoDecodeError` naming the file, the reason and the
    frame/time where it was found. The score of a concealed or partial picture is not the
    model's score of the video, and a lost tail changes the frame plan. Packets are checked
    over the whole file at probe time, pictures where decoding went (seeking skips some).
    Repair such files first (e.g. re-mux or re-encode with ffmpeg). A truncated MP4/MOV whose
    index is at the end cannot be opened at all; an MPEG-TS cut at a packet boundary is a valid
    shorter stream.
    ``on_damage="conceal"`` (``heke-run --on-damage conceal``) opts out: corrupt packets and
    frames with errors are kept as FFmpeg's decoder conceals them (its defaults, as the FFmpeg
    CLI: ``ec=guess_mvs+deblock``, no ``err_detect``), packets the decoder rejects lose their
    frames, and one :class:`DamageWarning` says ``concealed damage: N of M decoded frames had
    errors (first at frame K, T s)`` (N counts the frames FFmpeg flags; corrupt and rejected
    packets are named after it; where a packet is the first sign, K is the number of frames
    output before it, which decoder delay and threads shift by a few frames). Since lost frames
    break the demuxed index, damage switches to counting by decoding: a corrupt packet at probe
    time, or any damage ``read_frames`` meets under a demuxed index (a :class:`FrameIndexError`,
    upon which ``load_clips`` probes again with ``count="decode"``). That full decode counts the
    damage over the whole video, and the frame numbers are those of the concealed decode.
    Unopenable files, read errors, no decodable frame and truncated Matroska still fail: there
    is nothing there to conceal.

Raw ``.yuv`` files have the size given (``size=(width, height)``) and are yuv420p, or the
planar format a :class:`heke_runtime.yuv.RawSize` names (``--pix-fmt``: yuv422p, yuv444p,
yuv420p10le...; converted to RGB by swscale, as every container frame is); frames are counted
from the file size. They carry no timing, so ``fps`` defaults to :data:`RAW_FPS` unless given.
Decoding uses FFmpeg's frame and slice threads (``thread_type = "AUTO"``). Memory is bounded:
frames are decoded one after another and only requested ones are converted to RGB.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.sidedata.sidedata import SideData

from heke_runtime.errors import VideoDecodeError, reason_of
from heke_runtime.hdr import (
    DEFAULT_HDR,
    HDR_CHOICES,
    HdrMode,
    Transfer,
    primaries_name,
    source_peak,
    tonemap_to_sdr,
    transfer_name,
)
from heke_runtime.yuv import (
    luma_plane,
    raw_frame_count,
    raw_pix_fmt,
    read_raw_frames,
    read_raw_luma,
)

RAW_SUFFIXES = frozenset({".yuv"})
RAW_FPS = 25.0  # nominal rate for raw files, which store none (LIVE-style sets are 25/50 fps)
# A Matroska file is called truncated when its packets end this far before the declared end.
TRUNCATION_SLACK_S = 0.5
TRUNCATION_SLACK_FRACTION = 0.02

# A seek must skip at least this many frames to pay for itself (demuxer seek, decoder flush
# and restart of its frame threads, frames decoded again from the keyframe on).
SEEK_MIN_SKIP = 24

CountMethod = Literal["auto", "decode"]
SeekMode = Literal["auto", "never", "always"]
OnDamage = Literal["fail", "conceal"]
ON_DAMAGE_CHOICES: tuple[OnDamage, ...] = ("fail", "conceal")


class FrameIndexError(VideoDecodeError):
    """Decoded frames disagree with the demuxed frame index (see the module docstring)."""


class _DamageError(VideoDecodeError):
    """Damaged data found while decoding (``on_damage="fail"``, or a re-count under conceal)."""


class DamageWarning(UserWarning):
    """A damaged video was decoded with FFmpeg's error concealment (``on_damage="conceal"``)."""


class HdrWarning(UserWarning):
    """An HDR (PQ/HLG) video is read for a model trained on SDR (tonemapped or as-is)."""


@dataclass(frozen=True)
class VideoInfo:
    """What the runtime needs to know about a video; sizes are after rotation.

    ``fps`` is the mean rate over the video (``(num_frames - 1)`` intervals over the span of
    presentation times) and ``duration_s = num_frames / fps``. ``count_method``: ``"demux"``,
    ``"decode"`` or ``"raw"`` (from the file size). ``frame_pts`` holds each frame's
    presentation timestamp in ``time_base`` units, in display order (None when the stream has
    none, then times are ``index / fps``); ``keyframe_pts``/``keyframe_dts`` the presentation
    and decoding timestamps of the keyframe packets, where decoding can start after a seek
    (None when the index is not trusted for seeking). ``transfer``: ``"pq"``, ``"hlg"`` or
    ``"sdr"``; ``primaries``: FFmpeg's name (``"bt2020"``...); ``peak_nits``: the HDR source
    peak from MaxCLL or mastering metadata, None when absent (module docstring, "Colour").
    """

    path: str
    width: int
    height: int
    num_frames: int
    fps: float
    duration_s: float
    codec: str
    pix_fmt: str
    rotation: int
    mirrored: bool = False
    count_method: str = "demux"
    stream_index: int = 0
    time_base: Fraction = field(default=Fraction(1), repr=False)
    frame_pts: np.ndarray | None = field(default=None, repr=False, compare=False)
    keyframe_pts: np.ndarray | None = field(default=None, repr=False, compare=False)
    keyframe_dts: np.ndarray | None = field(default=None, repr=False, compare=False)
    transfer: Transfer = "sdr"
    primaries: str = "unspecified"
    peak_nits: float | None = None


@dataclass
class _Scan:
    """Result of one demux pass over a container file."""

    pts: list[int | None] = field(default_factory=list)
    first_frame: av.VideoFrame | None = None
    data_end_s: float = 0.0
    starts_with_keyframe: bool = True
    seen_packet: bool = False
    keyframes: list[tuple[int, int]] = field(default_factory=list)  # (pts, dts)
    damaged: bool = False  # a corrupt packet was seen (only under on_damage="conceal")


@dataclass
class _Damage:
    """What concealing decoding met: frames out, frames flagged with errors, packets flagged
    corrupt by the demuxer or rejected by the decoder, and where the first sign was."""

    frames: int = 0
    corrupt_frames: int = 0
    corrupt_packets: int = 0
    rejected_packets: int = 0
    first: tuple[int, float | None] | None = None  # (frame position, seconds)

    def seen(self, position: int, seconds: float | None) -> None:
        if self.first is None:
            self.first = (position, seconds)

    def message(self) -> str:
        position, seconds = self.first or (0, None)
        where = f"frame {position}" + (f", {seconds:.1f} s" if seconds is not None else "")
        text = (
            f"concealed damage: {self.corrupt_frames} of {self.frames} decoded frames had "
            f"errors (first at {where})"
        )
        extra = [
            f"{n} {what}"
            for n, what in (
                (self.corrupt_packets, "corrupt packets"),
                (self.rejected_packets, "packets the decoder rejected (their frames are lost)"),
            )
            if n
        ]
        return text + (f"; {', '.join(extra)}" if extra else "")


def probe_video(
    path: str | Path,
    *,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    count: CountMethod = "auto",
    on_damage: OnDamage = "fail",
) -> VideoInfo:
    """Open, index and check a video; see the module docstring for every rule applied.

    ``size``: ``(width, height)`` of a raw ``.yuv`` file (ignored for container files, which
    store their size). ``fps``: frame rate of a raw file (default :data:`RAW_FPS`).
    ``count``: ``"auto"`` (demuxed index, decoding only when it cannot be trusted) or
    ``"decode"`` (always count by decoding). ``on_damage``: ``"fail"`` raises
    :class:`VideoDecodeError` on damaged data, ``"conceal"`` keeps what FFmpeg's error
    concealment makes of it and warns (:class:`DamageWarning`; "Damaged files" in the module
    docstring).
    """
    if count not in ("auto", "decode"):
        raise ValueError(f"count must be 'auto' or 'decode', got {count!r}")
    _check_on_damage(on_damage)
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in RAW_SUFFIXES:
        return _probe_raw(path, size, fps)
    with _open(path) as container:  # stream attributes are only valid while it is open
        stream = _video_stream(container, path)
        scan = _scan(container, stream, path, conceal=on_damage == "conceal")
        _check_truncation(container, scan, path)
        pts, method = scan.pts, "demux"
        if count == "decode" or scan.damaged or not _index_trusted(scan):
            pts, method = _decoded_pts(path, stream.index, on_damage), "decode"
        info = _info(path, stream, scan.first_frame, pts, method)
        if method == "demux" and scan.keyframes:
            keys = np.unique(np.asarray(scan.keyframes, dtype=np.int64), axis=0)
            info = dataclasses.replace(info, keyframe_pts=keys[:, 0], keyframe_dts=keys[:, 1])
        return info


def read_frames(
    path: str | Path,
    indices: Sequence[int] | np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    info: VideoInfo | None = None,
    seek: SeekMode = "auto",
    on_damage: OnDamage = "fail",
    hdr: HdrMode = DEFAULT_HDR,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, rgb)`` for each distinct requested frame, in ascending order.

    ``rgb`` is ``[H, W, 3]`` uint8 in display orientation. Pass the ``info`` of an earlier
    :func:`probe_video` to avoid probing again. Frames are decoded sequentially from the start
    and only the requested ones are converted; nothing else is kept. ``seek``: ``"auto"`` jumps
    to the keyframe before a requested frame when that skips at least :data:`SEEK_MIN_SKIP`
    frames, ``"never"`` decodes every frame, ``"always"`` seeks whenever it skips any (tests);
    see "Seeking" in the module docstring. Raises ``ValueError`` for
    an index outside the video (at the call), :class:`VideoDecodeError` for damaged data and
    :class:`FrameIndexError` when decoding disagrees with the index (while iterating).
    ``on_damage="conceal"``: frames counted by decoding (``count_method == "decode"``, where
    :func:`probe_video` already reported the damage) are read concealed; damage met under a
    demuxed index raises :class:`FrameIndexError`, so that the caller counts by decoding.
    ``hdr``: ``"tonemap"`` or ``"as-is"`` for a PQ/HLG video, which gets an
    :class:`HdrWarning` ("Colour" in the module docstring).
    """
    _check_on_damage(on_damage)
    if hdr not in HDR_CHOICES:
        raise ValueError(f"hdr must be 'tonemap' or 'as-is', got {hdr!r}")
    if info is None:
        info = probe_video(path, size=size, on_damage=on_damage)
    wanted = _wanted(indices, info)
    if seek not in ("auto", "never", "always"):
        raise ValueError(f"seek must be 'auto', 'never' or 'always', got {seek!r}")
    if info.transfer != "sdr":
        warnings.warn(hdr_note(info, hdr), HdrWarning, stacklevel=2)
    tonemap = hdr == "tonemap" and info.transfer != "sdr"
    if info.count_method == "raw":
        width, height = info.width, info.height
        return read_raw_frames(Path(info.path), width, height, info.pix_fmt, wanted)
    if on_damage == "conceal" and info.count_method == "decode":
        # counted (and reported) by decoding
        return _decode_selected(info, wanted, conceal=True, tonemap=tonemap)
    runs = _seek_runs(info, wanted, seek)
    if all(keyframe is None for keyframe, _ in runs):
        frames = _decode_selected(info, wanted, tonemap=tonemap)
    else:
        frames = _decode_seeking(info, runs, tonemap=tonemap)
    return _recount_on_damage(frames) if on_damage == "conceal" else frames


def hdr_note(info: VideoInfo, hdr: HdrMode) -> str:
    """The one-line warning for an HDR video read with ``hdr``."""
    what = f"{info.transfer.upper()} transfer, {info.primaries} primaries"
    if info.peak_nits:
        what += f", peak {info.peak_nits:g} nits"
    done = (
        "tonemapped to SDR BT.709 (--hdr tonemap)"
        if hdr == "tonemap"
        else "scored as-is, its code values read as SDR (--hdr as-is)"
    )
    return f"{info.path}: HDR video ({what}); HEKE was trained on SDR: {done}"


def _check_on_damage(on_damage: str) -> None:
    if on_damage not in ON_DAMAGE_CHOICES:
        raise ValueError(f"on_damage must be 'fail' or 'conceal', got {on_damage!r}")


def _recount_on_damage(
    frames: Iterator[tuple[int, np.ndarray]],
) -> Iterator[tuple[int, np.ndarray]]:
    """Under conceal, damage met while trusting the demuxed index asks for a count by decoding
    (decoder-rejected packets lose frames, so the index no longer holds)."""
    try:
        yield from frames
    except _DamageError as exc:
        raise FrameIndexError(f"{exc}; counting the frames by decoding to conceal it") from exc


def frame_times(info: VideoInfo, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Presentation times in seconds of frames ``indices``, counted from the first frame."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= info.num_frames):
        raise ValueError(f"frame indices must lie in 0..{info.num_frames - 1} for {info.path}")
    if info.frame_pts is None:
        return idx / info.fps
    ticks = info.frame_pts[idx] - info.frame_pts[0]
    return ticks * float(info.time_base)


@dataclass(frozen=True)
class SnippetTimes:
    """Where each snippet of a frame plan sits: first and last frame, and in seconds from
    the first frame, when its first frame shows and when its last frame stops showing."""

    first_frame: np.ndarray  # [T] int64
    last_frame: np.ndarray  # [T] int64
    start_s: np.ndarray  # [T] float64
    end_s: np.ndarray  # [T] float64


def snippet_times(info: VideoInfo, plan: np.ndarray) -> SnippetTimes:
    """The times of a ``[T, N]`` frame plan, from the index ``info`` holds (no decoding).

    A snippet ends when the frame after its last one shows (exact for variable frame
    rates), or one nominal frame later at the end of the video.
    """
    first = np.asarray(plan)[:, 0].astype(np.int64)
    last = np.asarray(plan)[:, -1].astype(np.int64)
    count = int(info.num_frames)
    own = np.asarray(frame_times(info, last), dtype=np.float64)
    following = np.asarray(frame_times(info, np.minimum(last + 1, count - 1)), dtype=np.float64)
    frame = 1.0 / float(info.fps) if info.fps else 0.0
    end = np.where(last + 1 < count, following, own + frame)
    start = np.asarray(frame_times(info, first), dtype=np.float64)
    return SnippetTimes(first, last, start, end)


def read_luma(info: VideoInfo) -> Iterator[np.ndarray]:
    """Yield every frame's Y plane, ``[H, W]`` uint8 in display orientation, in order.

    This is the picture full-reference metrics read (the authors' ``load_frames.m`` reads the
    Y plane of the video converted to yuv420p): frames in another pixel format go through
    swscale to yuv420p first, which leaves an 8-bit yuv420p/yuv422p/yuv444p Y plane as is.
    Memory holds one frame. Damage and index disagreement raise as in :func:`read_frames`.
    """
    path = Path(info.path)
    if info.count_method == "raw":
        yield from read_raw_luma(path, info.width, info.height, info.pix_fmt)
        return
    position = 0
    with _open(path) as container:
        stream = _stream_at(container, info.stream_index)
        for frame in _decoded(container, stream, path):
            _check_index(info, position, frame)
            yield _orient(luma_plane(frame), info)
            position += 1
    if position < info.num_frames:
        raise FrameIndexError(
            f"{path}: the decoder gave {position} frames, fewer than the {info.num_frames} "
            "the index counted"
        )


# --- opening and checking -------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(f"{path}: no such file")
    if path.is_dir():
        raise VideoDecodeError(f"{path}: is a directory, not a video file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes)")


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.InvalidDataError as exc:
        raise VideoDecodeError(
            f"{path}: not a video file FFmpeg can read, or damaged/truncated ({reason_of(exc)})"
        ) from exc
    except (av.FFmpegError, OSError) as exc:
        raise VideoDecodeError(f"{path}: cannot open: {reason_of(exc)}") from exc


# FFmpeg's text-art demuxers draw a text file (.ans, .nfo, some .txt) as a "video" of
# rendered characters; scoring that would give numbers for what is not a video.
TEXT_ART_DEMUXERS = frozenset({"tty", "bin", "xbin", "idf", "adf"})


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if container.format.name in TEXT_ART_DEMUXERS:
        raise VideoDecodeError(
            f"{path}: a text file, not a video (FFmpeg's {container.format.name} demuxer "
            "would draw it as text art)"
        )
    # Cover art in audio files is a one-picture "video" stream; it is not a video.
    streams = [s for s in container.streams.video if not _is_attached_picture(s)]
    if not streams:
        kinds: list[str] = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoDecodeError(f"{path}: no video stream (streams: {', '.join(kinds)})")
    try:
        best = container.streams.best("video")
    except (av.FFmpegError, ValueError):
        best = None
    return best if best in streams else streams[0]


def _stream_at(container: av.container.InputContainer, index: int) -> av.VideoStream:
    """The video stream ``index``, set up for threaded decoding (frame and slice threads)."""
    stream = next(s for s in container.streams.video if s.index == index)
    stream.thread_type = "AUTO"
    return stream


def _is_attached_picture(stream: av.stream.Stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _damage(path: Path, position: int, seconds: float | None, what: str) -> VideoDecodeError:
    where = f"frame {position}" + (f" (~{seconds:.2f} s)" if seconds is not None else "")
    return _DamageError(f"{path}: damaged video data at {where}: {what}")


def _scan(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    path: Path,
    *,
    conceal: bool = False,
) -> _Scan:
    """Demux every packet once: index the video timestamps, decode only the first frame.

    ``conceal``: a corrupt packet sets ``damaged`` (the caller then counts by decoding)."""
    scan = _Scan()
    try:
        for packet in container.demux():
            _track_end(scan, packet)
            if packet.stream_index != stream.index:
                continue
            if packet.is_corrupt and not conceal:
                raise _damage(path, len(scan.pts), _seconds(packet), "corrupt packet")
            scan.damaged = scan.damaged or packet.is_corrupt
            if scan.first_frame is None:
                _decode_first(scan, packet, path, conceal=conceal)
            if packet.size and not scan.seen_packet:
                # Discarded packets count here: an edit list hides a keyframe it decodes from.
                scan.starts_with_keyframe, scan.seen_packet = packet.is_keyframe, True
            if packet.size and not packet.is_discard:
                scan.pts.append(packet.pts)
                if packet.is_keyframe and packet.pts is not None:
                    dts = packet.pts if packet.dts is None else packet.dts
                    scan.keyframes.append((packet.pts, dts))
    except av.FFmpegError as exc:
        raise _damage(path, len(scan.pts), None, f"read error ({reason_of(exc)})") from exc
    if not scan.pts:
        raise VideoDecodeError(f"{path}: the video stream has no frames")
    if scan.first_frame is None:
        raise VideoDecodeError(f"{path}: no frame of the video stream could be decoded")
    return scan


def _index_trusted(scan: _Scan) -> bool:
    """Whether one packet per displayed frame can be assumed (module docstring)."""
    pts = scan.pts
    # A stream cut in mid-GOP starts with frames the decoder cannot show and drops.
    return scan.starts_with_keyframe and None not in pts and len(set(pts)) == len(pts)


def _decode_first(scan: _Scan, packet: av.Packet, path: Path, *, conceal: bool) -> None:
    try:
        frames = packet.decode()
    except av.FFmpegError as exc:
        if conceal:  # the next packet may decode; the full count will tell
            scan.damaged = True
            return
        raise _damage(path, 0, _seconds(packet), f"decoder error ({reason_of(exc)})") from exc
    if frames:
        scan.first_frame = frames[0]


def _seconds(packet: av.Packet) -> float | None:
    if packet.pts is None or packet.time_base is None:
        return None
    return float(packet.pts * packet.time_base)


def _track_end(scan: _Scan, packet: av.Packet) -> None:
    if packet.pts is None or packet.time_base is None or not packet.size:
        return
    end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
    scan.data_end_s = max(scan.data_end_s, end)


def _check_truncation(container: av.container.InputContainer, scan: _Scan, path: Path) -> None:
    # Only Matroska/WebM: their header states the duration and their demuxer stops quietly at
    # a cut (MP4/MOV/AVI cuts already show as corrupt packets or an unreadable index).
    if "matroska" not in container.format.name or not container.duration:
        return
    # Matroska's Duration runs from timestamp 0, not from the first frame: FFmpeg's muxer
    # writes the last frame's end, so a file starting at 1.48 s (MPEG-TS timestamps kept)
    # that declares 2.68 s is whole. The data's end is compared as it is, not less its start.
    declared = container.duration / av.time_base
    found = scan.data_end_s
    slack = max(TRUNCATION_SLACK_S, TRUNCATION_SLACK_FRACTION * declared)
    if found < declared - slack:
        raise VideoDecodeError(
            f"{path}: truncated or damaged: data ends at {found:.2f} s but the header declares "
            f"{declared:.2f} s"
        )


def _probe_raw(path: Path, size: tuple[int, int] | None, fps: float | None) -> VideoInfo:
    if size is None:
        raise VideoDecodeError(
            f"{path}: a raw .yuv file needs its frame size (size=(width, height), --size WxH)"
        )
    width, height = size
    pix_fmt = raw_pix_fmt(size)
    count = raw_frame_count(path, width, height, pix_fmt)
    rate = RAW_FPS if fps is None else float(fps)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return VideoInfo(
        str(path), width, height, count, rate, count / rate, "rawvideo", pix_fmt, 0,
        count_method="raw",
    )  # fmt: skip


# --- counting, timing, orientation ------------------------------------------------------------


def _decoded_pts(path: Path, stream_index: int, on_damage: OnDamage = "fail") -> list[int | None]:
    """Timestamps of every frame the decoder outputs (the exact count, slow path).

    Under ``"conceal"`` damage is counted over the whole video and warned about once."""
    pts: list[int | None] = []
    damage = _Damage() if on_damage == "conceal" else None
    with _open(path) as container:
        stream = _stream_at(container, stream_index)
        for frame in _decoded(container, stream, path, damage=damage):
            pts.append(frame.pts)
    if not pts:
        raise VideoDecodeError(f"{path}: no frame of the video stream could be decoded")
    if damage is not None and damage.first is not None:
        warnings.warn(f"{path}: {damage.message()}", DamageWarning, stacklevel=3)
    return pts


def _info(
    path: Path,
    stream: av.VideoStream,
    first: av.VideoFrame | None,
    pts: list[int | None],
    method: str,
) -> VideoInfo:
    if first is None:  # _scan raises before this; keeps the type checker informed
        raise VideoDecodeError(f"{path}: no frame of the video stream could be decoded")
    time_base = stream.time_base or Fraction(1)
    known = None if None in pts else np.asarray(pts, dtype=np.int64)
    if known is not None and method == "demux":
        known = np.sort(known)  # packets come in decoding order; frames in display order
    rate = _mean_rate(stream, known, time_base)
    rotation, mirrored = _orientation(first)
    transfer, primaries, peak = _colour(first, stream)
    width, height = first.width, first.height
    if rotation % 180:
        width, height = height, width
    return VideoInfo(
        path=str(path),
        width=width,
        height=height,
        num_frames=len(pts),
        fps=rate,
        duration_s=len(pts) / rate,
        codec=stream.codec_context.name,
        pix_fmt=first.format.name,
        rotation=rotation,
        mirrored=mirrored,
        count_method=method,
        stream_index=stream.index,
        time_base=time_base,
        frame_pts=known,
        transfer=transfer,
        primaries=primaries,
        peak_nits=peak,
    )


def _mean_rate(stream: av.VideoStream, pts: np.ndarray | None, time_base: Fraction) -> float:
    if pts is not None and len(pts) > 1 and pts.max() > pts.min():
        return float((len(pts) - 1) / ((int(pts.max()) - int(pts.min())) * time_base))
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return RAW_FPS  # a single frame without any rate: only times depend on it


def _orientation(frame: av.VideoFrame) -> tuple[int, bool]:
    """(clockwise degrees, mirrored) that turn this frame to its display orientation."""
    side = frame.side_data.get("DISPLAYMATRIX")
    if not isinstance(side, SideData):
        return 0, False
    matrix = np.frombuffer(bytes(side), dtype=np.int32)
    if matrix.size < 9:
        return 0, False
    # FFmpeg's matrix maps (x, y) to (a*x + c*y, b*x + d*y), y pointing down.
    a, b, c, d = (float(v) for v in matrix[[0, 1, 3, 4]])
    mirrored = a * d - b * c < 0
    if mirrored:  # undo the horizontal flip that follows the rotation
        a, c = -a, -c
    angle = math.degrees(math.atan2(b, a))
    rotation = round(angle / 90) * 90 % 360
    if abs((angle - rotation + 180) % 360 - 180) > 1:
        warnings.warn(
            f"display rotation {angle:.1f} degrees is not a multiple of 90; using {rotation}",
            stacklevel=4,
        )
    return rotation, mirrored


def _colour(frame: av.VideoFrame, stream: av.VideoStream) -> tuple[Transfer, str, float | None]:
    """``transfer``, ``primaries`` and ``peak_nits`` of ``VideoInfo`` (the frame's tags, else
    the stream's; FFmpeg's code 2 is "unspecified")."""
    codec = stream.codec_context
    trc = frame.color_trc if frame.color_trc != 2 else codec.color_trc
    primaries = frame.color_primaries if frame.color_primaries != 2 else codec.color_primaries
    light = frame.side_data.get("CONTENT_LIGHT_LEVEL")
    max_cll = int(np.frombuffer(bytes(light), np.uint32)[0]) if isinstance(light, SideData) else 0
    mastering = frame.side_data.get("MASTERING_DISPLAY_METADATA")
    mastering_max = None
    if isinstance(mastering, SideData):
        # AVMasteringDisplayMetadata: 8 primaries/white point rationals, min and max
        # luminance rationals, has_primaries, has_luminance (int32 each).
        fields = np.frombuffer(bytes(mastering), np.int32)
        if fields.size >= 22 and fields[21] and fields[19]:
            mastering_max = float(fields[18]) / float(fields[19])
    return transfer_name(trc), primaries_name(primaries), source_peak(max_cll, mastering_max)


def _orient(rgb: np.ndarray, info: VideoInfo) -> np.ndarray:
    if not info.rotation and not info.mirrored:
        return rgb
    turned = np.rot90(rgb, k=-(info.rotation // 90))  # rot90 turns counter-clockwise
    if info.mirrored:
        turned = turned[:, ::-1]
    return np.ascontiguousarray(turned)


# --- decoding ---------------------------------------------------------------------------------


def _wanted(indices: Sequence[int] | np.ndarray, info: VideoInfo) -> list[int]:
    wanted = sorted({int(i) for i in np.asarray(indices, dtype=np.int64).ravel()})
    if wanted and (wanted[0] < 0 or wanted[-1] >= info.num_frames):
        bad = wanted[0] if wanted[0] < 0 else wanted[-1]
        raise ValueError(f"frame index {bad} is outside 0..{info.num_frames - 1} of {info.path}")
    return wanted


def _decoded(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    path: Path,
    seeked_to: int | None = None,
    damage: _Damage | None = None,
) -> Iterator[av.VideoFrame]:
    """Every decoded frame in display order; any sign of damage raises, or with ``damage``
    is counted there and the concealed frames are kept (packets the decoder rejects give none).

    After a seek to the keyframe at ``seeked_to`` (pts), frames shown before it (open-GOP
    leading pictures, whose references were skipped) may fail; they are dropped, not damage.
    """
    count = 0
    for packet in container.demux(stream):
        early = _before(packet.pts, seeked_to)
        if packet.is_corrupt:
            if damage is None:
                raise _damage(path, count, _seconds(packet), "corrupt packet")
            damage.corrupt_packets += 1
            damage.seen(count, _seconds(packet))
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            if early:
                continue
            if damage is None:
                raise _damage(
                    path, count, _seconds(packet), f"decoder error ({reason_of(exc)})"
                ) from exc
            damage.rejected_packets += 1
            damage.seen(count, _seconds(packet))
            continue
        for frame in frames:
            if frame.is_corrupt:
                if _before(frame.pts, seeked_to):
                    continue
                if damage is None:
                    raise _damage(path, count, frame.time, "frame decoded with errors")
                damage.corrupt_frames += 1
                damage.seen(count, frame.time)
            count += 1
            if damage is not None:
                damage.frames = count
            yield frame


def _before(pts: int | None, seeked_to: int | None) -> bool:
    return seeked_to is not None and pts is not None and pts < seeked_to


def _decode_selected(
    info: VideoInfo, wanted: list[int], *, conceal: bool = False, tonemap: bool = False
) -> Iterator[tuple[int, np.ndarray]]:
    path = Path(info.path)
    if not wanted:
        return
    with _open(path) as container:
        stream = _stream_at(container, info.stream_index)
        target = iter(wanted)
        next_index = next(target)
        position = 0
        damage = _Damage() if conceal else None  # already reported by probe_video
        for frame in _decoded(container, stream, path, damage=damage):
            _check_index(info, position, frame)
            if position == next_index:
                yield position, _to_rgb(frame, info, position, tonemap=tonemap)
                next_index = next(target, -1)
                if next_index < 0:
                    return
            position += 1
    raise FrameIndexError(
        f"{path}: the decoder gave {position} frames, fewer than the {info.num_frames} "
        "the index counted"
    )


def _check_index(info: VideoInfo, position: int, frame: av.VideoFrame) -> None:
    if info.frame_pts is None or frame.pts is None:
        return
    if position >= len(info.frame_pts) or int(info.frame_pts[position]) != frame.pts:
        expected = (
            f"{float(info.frame_pts[position] * info.time_base):.3f} s"
            if position < len(info.frame_pts)
            else "no frame"
        )
        raise FrameIndexError(
            f"{info.path}: decoded frame {position} is at {float(frame.pts * info.time_base):.3f}"
            f" s but the demuxed index has {expected} there"
        )


def _to_rgb(
    frame: av.VideoFrame, info: VideoInfo, position: int, *, tonemap: bool = False
) -> np.ndarray:
    coded = (info.height, info.width) if info.rotation % 180 else (info.width, info.height)
    if (frame.width, frame.height) != coded:
        raise VideoDecodeError(
            f"{info.path}: frame {position} is {frame.width}x{frame.height} but the video "
            f"started at {coded[0]}x{coded[1]}; size changes are not supported"
        )
    if tonemap:  # HDR to SDR: heke_runtime.hdr
        rgb16 = frame.to_ndarray(format="rgb48le", interpolation="BICUBIC")
        rgb = tonemap_to_sdr(rgb16, info.transfer, info.primaries, info.peak_nits)
    else:
        rgb = frame.to_ndarray(format="rgb24", interpolation="BICUBIC")
    return _orient(rgb, info)


# --- seeking ----------------------------------------------------------------------------------

Run = tuple[int | None, list[int]]  # (display index of the keyframe to seek to, or None; frames)


def _seek_runs(info: VideoInfo, wanted: list[int], seek: SeekMode) -> list[Run]:
    """Group the requested frames into runs, each decoded after one seek (or none)."""
    keys = _keyframe_indices(info) if seek != "never" else np.empty(0, np.int64)
    least = 1 if seek == "always" else SEEK_MIN_SKIP
    runs: list[Run] = []
    position = 0  # the next frame sequential decoding would reach
    for target in wanted:
        before = keys[keys <= target]
        keyframe = int(before[-1]) if before.size else None
        if keyframe is not None and keyframe - position >= least:
            runs.append((keyframe, [target]))
        elif runs:
            runs[-1][1].append(target)
        else:
            runs.append((None, [target]))
        position = target + 1
    return runs


def _keyframe_indices(info: VideoInfo) -> np.ndarray:
    """Display indices of the keyframes, when frames can be identified by timestamp."""
    pts, keys = info.frame_pts, info.keyframe_pts
    if info.count_method != "demux" or pts is None or keys is None or not keys.size:
        return np.empty(0, np.int64)
    where = np.searchsorted(pts, keys).clip(0, len(pts) - 1)
    return where[pts[where] == keys]


class _Overshoot(Exception):
    """A seek landed after the frame it was meant to reach."""


def _decode_seeking(
    info: VideoInfo, runs: list[Run], *, tonemap: bool = False
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode run by run, seeking to each run's keyframe; frames are known by timestamp."""
    path = Path(info.path)
    with _open(path) as container:
        stream = _stream_at(container, info.stream_index)
        frames: Iterator[av.VideoFrame] | None = None
        for number, (keyframe, targets) in enumerate(runs):
            if keyframe is None:
                frames = frames or _decoded(container, stream, path)
                yield from _take(frames, targets, info, seeked=False, tonemap=tonemap)
                continue
            for offset in _seek_offsets(info, keyframe):
                container.seek(offset, stream=stream, backward=True)
                frames = _decoded(container, stream, path, seeked_to=_pts_at(info, keyframe))
                try:
                    yield from _take(frames, targets, info, seeked=True, tonemap=tonemap)
                    break
                except _Overshoot:
                    continue  # nothing of this run was yielded yet: try the next offset
            else:
                # No seek landed early enough: decode the rest from the start instead.
                rest = [t for _, later in runs[number:] for t in later]
                yield from _decode_seeking(info, [(None, rest)], tonemap=tonemap)
                return


def _pts_at(info: VideoInfo, index: int) -> int:
    assert info.frame_pts is not None  # seeking needs the timestamp index
    return int(info.frame_pts[index])


def _seek_offsets(info: VideoInfo, keyframe: int) -> list[int]:
    """Where to seek for the keyframe shown as frame ``keyframe``: its presentation time (what
    MP4 and Matroska seek by), then its decoding time (MPEG-TS/PS seek by that)."""
    pts = _pts_at(info, keyframe)
    offsets = [pts]
    if info.keyframe_pts is not None and info.keyframe_dts is not None:
        where = int(np.searchsorted(info.keyframe_pts, pts))
        dts = int(info.keyframe_dts[min(where, len(info.keyframe_dts) - 1)])
        if dts != pts:
            offsets.append(dts)
    return offsets


def _take(
    frames: Iterator[av.VideoFrame],
    targets: list[int],
    info: VideoInfo,
    *,
    seeked: bool,
    tonemap: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode on until every target is yielded; frames are identified by their timestamp.

    A frame past the awaited one means the seek went too far (``seeked``, before the first
    target) or the decoder skipped a frame the index has (otherwise).
    """
    pending = iter(targets)
    target = next(pending)
    for frame in frames:
        index = _index_of(info, frame)
        if index > target and seeked and target == targets[0]:
            raise _Overshoot
        if index > target:
            raise FrameIndexError(f"{info.path}: frame {target} never came out of the decoder")
        if index == target:
            yield index, _to_rgb(frame, info, index, tonemap=tonemap)
            target = next(pending, -1)
            if target < 0:
                return
    if seeked and target == targets[0]:
        raise _Overshoot  # the seek landed past the target, maybe at the end of the file
    raise FrameIndexError(f"{info.path}: frame {target} never came out of the decoder")


def _index_of(info: VideoInfo, frame: av.VideoFrame) -> int:
    pts = info.frame_pts
    assert pts is not None
    index = int(np.searchsorted(pts, frame.pts)) if frame.pts is not None else len(pts)
    if index >= len(pts) or pts[index] != frame.pts:
        raise FrameIndexError(
            f"{info.path}: the decoder produced a frame (pts {frame.pts}) that the demuxed "
            "index does not have"
        )
    return index
