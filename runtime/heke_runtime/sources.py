"""Inputs that are not local files: URLs and standard input, copied to a temporary file first.

The runtime reads a video at least twice (an index pass over every packet in
:func:`heke_runtime.decode.probe_video`, then a decoding pass, with seeks, over the frames it
samples), so an input that is not a regular local file is first copied, in one sequential
pass, to a file under the system's temporary folder (``tempfile.gettempdir()``, set with
``TMPDIR``), scored from there and deleted when the video is done, whatever happened:

- ``-``: standard input (to score a local file named ``-``, write ``./-``);
- a FIFO (named pipe) or character device, such as ``/dev/stdin`` or a ``<(...)`` process
  substitution;
- ``http://`` and ``https://`` URLs: downloaded byte for byte with :mod:`urllib` (proxies
  from the environment, redirects followed), so the copy is exactly the server's file and scores
  like it; a response shorter than its ``Content-Length`` is a dropped connection;
- any other FFmpeg protocol URL that PyAV's FFmpeg reads (``rtmp://``, ``rtsp://``,
  ``tcp://``...; PyAV's wheels have no ``srt://``) and HLS playlists (a URL whose path ends
  in ``.m3u8``): read through FFmpeg (PyAV) and re-muxed, video stream only and packets
  untouched, into a Matroska file (timestamps rounded to milliseconds; packets FFmpeg gives
  without timestamps, as RTSP's first ones, are given some: :class:`_Stamps`).

Each read waits at most ``stall_s`` seconds for data (the socket timeout, FFmpeg's
``rw_timeout``), FFmpeg's reconnect options are off: a stall or a dropped connection is an
error, never a hang or a silently shorter video. The one exception is a live protocol
(RTMP, RTSP, TCP): it carries no length, and its stream ends when the server closes the
connection, so that close ends the copy, with a warning in the record saying a connection
dropped early would look the same. With ``deadline_s`` (heke-run's ``--timeout``) the whole
copy stops when it runs past that time, so a copy that outlives the pipeline's patience (an
endless stream without ``--stream-seconds``) stops writing too. Errors name the input as the
user typed it (the URL, or ``-``), as does the record's ``path``.
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from heke_runtime.errors import HekeError, VideoDecodeError, reason_of

STDIN = "-"
NETWORK_STALL_S = 60.0  # how long a read may wait for data when no --timeout is given
CHUNK = 1 << 20
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_HTTP = ("http", "https")
_PLAYLIST_SUFFIXES = (".m3u8",)
# How FFmpeg reports a connection the server closed: the end of a live stream.
_CLOSED = (errno.EIO, errno.ECONNRESET, errno.EPIPE)


def is_url(text: str) -> bool:
    """Whether ``text`` is a URL (``scheme://...``), not a path."""
    return bool(_SCHEME.match(text))


def is_stream(text: str) -> bool:
    """Whether ``text`` names an input read once and spooled: ``-``, a URL, a pipe/device."""
    if text == STDIN or is_url(text):
        return True
    try:
        mode = os.stat(text).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


@contextmanager
def local_copy(
    source: str,
    *,
    stall_s: float | None = None,
    stream_s: float | None = None,
    deadline_s: float | None = None,
) -> Iterator[str]:
    """A local path holding ``source``: the path itself for a regular file, otherwise a
    temporary copy (module docstring), deleted on exit. ``stream_s``: read at most that many
    seconds of a stream read through FFmpeg (a live one may never end); ``deadline_s``: the
    most seconds the whole copy may take. Errors raised inside the block that name the copy
    are raised again naming ``source``."""
    if not is_stream(source):
        yield source
        return
    stall = NETWORK_STALL_S if stall_s is None else stall_s
    suffix = Path(urllib.parse.urlsplit(source).path).suffix if is_url(source) else ""
    handle, name = tempfile.mkstemp(prefix="heke-input-", suffix=_safe_suffix(suffix))
    os.close(handle)
    _IN_USE.add(name)
    try:
        _spool(source, Path(name), stall, stream_s, _Deadline(source, deadline_s))
        try:
            yield name
        except HekeError as exc:
            if name not in str(exc):
                raise
            raise _renamed(exc, name, source) from exc
    finally:
        Path(name).unlink(missing_ok=True)
        _IN_USE.discard(name)


def _remove_copies_in_use() -> None:
    # A decode the pipeline gave up on (--timeout) may still be copying an endless stream
    # when the run ends; its thread never reaches the finally above, so the exit removes it.
    for name in list(_IN_USE):
        Path(name).unlink(missing_ok=True)


_IN_USE: set[str] = set()  # temporary copies not yet deleted
atexit.register(_remove_copies_in_use)


def _safe_suffix(suffix: str) -> str:
    # .m3u8 is re-muxed to Matroska; other suffixes only help FFmpeg guess (and mark .yuv).
    if suffix.lower() in _PLAYLIST_SUFFIXES:
        return ".mkv"
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""


def _renamed(exc: HekeError, name: str, source: str) -> HekeError:
    text = str(exc).replace(name, source)
    try:
        return type(exc)(text)
    except Exception:  # an error type with another constructor
        return VideoDecodeError(text)


class _Deadline:
    """When the whole copy must be done (``local_copy``'s ``deadline_s``); ``check`` raises
    past it, saying how much was read."""

    def __init__(self, source: str, seconds: float | None) -> None:
        self.source, self.seconds = source, seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def check(self, read: str) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise VideoDecodeError(
                f"{self.source}: reading took longer than {self.seconds:g} s (--timeout) "
                f"after {read}; stopped"
            )


def _spool(
    source: str, dest: Path, stall_s: float, stream_s: float | None, deadline: _Deadline
) -> None:
    scheme = urllib.parse.urlsplit(source).scheme.lower() if is_url(source) else ""
    if not scheme:
        _spool_pipe(source, dest, deadline)
    elif scheme in _HTTP and not _is_playlist(source):
        _spool_http(source, dest, stall_s, deadline)
    else:
        _remux(source, dest, stall_s, stream_s, deadline)


def _is_playlist(url: str) -> bool:
    return urllib.parse.urlsplit(url).path.lower().endswith(_PLAYLIST_SUFFIXES)


def _spool_pipe(source: str, dest: Path, deadline: _Deadline) -> None:
    what = "standard input" if source == STDIN else "pipe"
    try:
        if source == STDIN:
            copied = _copy(sys.stdin.buffer, dest, deadline)
        else:
            with open(source, "rb") as pipe:
                copied = _copy(pipe, dest, deadline)
    except OSError as exc:
        raise VideoDecodeError(f"{source}: cannot read {what}: {reason_of(exc)}") from exc
    if not copied:
        raise VideoDecodeError(f"{source}: {what} is empty")


def _copy(stream: BinaryIO, dest: Path, deadline: _Deadline) -> int:
    got = 0
    with dest.open("wb") as out:
        while chunk := _read1(stream):
            out.write(chunk)
            got += len(chunk)
            deadline.check(_size(got))
    return got


def _read1(stream: BinaryIO) -> bytes:
    # What came, not a full chunk: a slow pipe's bytes are counted (and checked against the
    # deadline) as they arrive.
    read1 = getattr(stream, "read1", None)
    return read1(CHUNK) if read1 else stream.read(CHUNK)


def _spool_http(url: str, dest: Path, stall_s: float, deadline: _Deadline) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "heke-run"})
    try:
        response = urllib.request.urlopen(request, timeout=stall_s)
    except urllib.error.HTTPError as exc:
        raise VideoDecodeError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise VideoDecodeError(f"{url}: cannot connect ({reason_of(reason)})") from exc
    length = response.headers.get("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    got = 0
    with response, dest.open("wb") as out:
        try:
            while chunk := response.read1(CHUNK):  # what came, not a full chunk
                out.write(chunk)
                got += len(chunk)
                deadline.check(_size(got))
        except TimeoutError as exc:
            raise VideoDecodeError(
                f"{url}: no data for {stall_s:g} s after {_size(got)} (network stall)"
            ) from exc
        except OSError as exc:
            raise VideoDecodeError(
                f"{url}: connection dropped after {_size(got)} ({reason_of(exc)})"
            ) from exc
    if expected is not None and got < expected:
        raise VideoDecodeError(
            f"{url}: connection dropped after {_size(got)} of {_size(expected)} "
            "(the server closed it early)"
        )
    if not got:
        raise VideoDecodeError(f"{url}: the server sent no data")


def _remux(
    url: str, dest: Path, stall_s: float, stream_s: float | None, deadline: _Deadline
) -> None:
    """Copy the video stream's packets of an FFmpeg protocol URL into a Matroska file."""
    import av  # PyAV loads on first use only

    options = {
        "rw_timeout": str(int(stall_s * 1_000_000)),  # microseconds
        "reconnect": "0",
        "reconnect_streamed": "0",
        "reconnect_at_eof": "0",
    }
    try:
        with av.open(url, container_options=options, metadata_errors="ignore") as source:
            if not source.streams.video:
                raise VideoDecodeError(f"{url}: no video stream")
            with av.open(str(dest), "w", format="matroska") as out:
                copied, cut = _copy_packets(url, source, out, stall_s, stream_s, deadline)
    except av.ProtocolNotFoundError as exc:
        scheme = urllib.parse.urlsplit(url).scheme
        raise VideoDecodeError(
            f"{url}: this FFmpeg (PyAV's build) cannot read {scheme}:// (protocol not found)"
        ) from exc
    except av.FFmpegError as exc:
        if exc.errno == errno.ETIMEDOUT:
            raise VideoDecodeError(f"{url}: no data for {stall_s:g} s (network stall)") from exc
        raise VideoDecodeError(f"{url}: cannot read: {reason_of(exc)}") from exc
    except OSError as exc:
        raise VideoDecodeError(f"{url}: cannot read: {reason_of(exc)}") from exc
    if cut:
        warnings.warn(
            f"{url}: read the stream's first {stream_s:g} s ({copied} video packets), as "
            "--stream-seconds asks; the rest was not read",
            stacklevel=2,
        )
    elif not _is_playlist(url):
        warnings.warn(
            f"{url}: the stream ended after {copied} video packets, when the server closed "
            "the connection; a live protocol carries no length, so a connection dropped early "
            "cannot be told from the stream's end",
            stacklevel=2,
        )


def _copy_packets(
    url: str, source: Any, out: Any, stall_s: float, stream_s: float | None, deadline: _Deadline
) -> tuple[int, bool]:
    """Copy until the end of the stream, or until a packet's decoding time is ``stream_s``
    past the first's: the count of video packets copied, and whether ``stream_s`` cut the
    stream. Cutting in decoding order keeps every copied frame decodable. A live protocol
    (RTMP, RTSP, TCP...) ends when the server closes the connection, which FFmpeg reports as
    an end of file or, for RTMP, as an I/O error after the last packet: once packets have
    come, that error ends the copy too. A stall is always an error."""
    import av

    stream = source.streams.video[0]
    copy = out.add_stream_from_template(stream)
    stamps = _Stamps(stream)
    copied, first = 0, None
    try:
        for packet in source.demux(stream):
            if not packet.size:
                continue  # the flush packet demux() ends with
            for ready in stamps.given(packet):
                first = ready.dts if first is None else first
                if stream_s is not None and (ready.dts - first) * ready.time_base >= stream_s:
                    return copied, True
                ready.stream = copy
                out.mux(ready)
                copied += 1
            deadline.check(f"{copied} video packets")
    except av.FFmpegError as exc:
        if exc.errno == errno.ETIMEDOUT:
            raise VideoDecodeError(
                f"{url}: no data for {stall_s:g} s after {copied} video packets (network stall)"
            ) from exc
        if exc.errno not in _CLOSED or not copied or _is_playlist(url):
            raise
    return copied, False


class _Stamps:
    """Timestamps for packets that come without: RTSP's first packets arrive before FFmpeg
    knows the stream's timing (H.264 over RTP: the keyframe has no pts and no dts, the two
    after it no dts), and a muxer refuses them while the decoder needs them all. They are
    held until a packet with a dts comes, then given dts one frame apart back from it (the
    frame rate's step); a pts left unset is the dts, which keeps the keyframe first. A dts
    that would not rise is moved one tick past the last, as the muxer requires."""

    def __init__(self, stream: Any) -> None:
        rate = stream.average_rate or stream.guessed_rate
        step = 1 / (rate * stream.time_base) if rate and stream.time_base else 1
        self.step = max(1, round(step))
        self.held: list[Any] = []
        self.last: int | None = None

    def given(self, packet: Any) -> list[Any]:
        """The packets ready to mux, in decoding order, now that ``packet`` came."""
        if packet.dts is None and self.last is None:
            self.held.append(packet)
            return []
        if packet.dts is None or (self.last is not None and packet.dts <= self.last):
            packet.dts = (self.last or 0) + (self.step if packet.dts is None else 1)
        ready, self.held = [*self.held, packet], []
        for back, early in enumerate(reversed(ready[:-1]), 1):
            early.dts = packet.dts - back * self.step
        for each in ready:
            if each.pts is None:
                each.pts = each.dts
        self.last = packet.dts
        return ready


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count} bytes"


__all__ = ["NETWORK_STALL_S", "STDIN", "is_stream", "is_url", "local_copy"]
