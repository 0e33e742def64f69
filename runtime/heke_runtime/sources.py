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
- any other FFmpeg protocol URL (``rtmp://``, ``rtsp://``, ``srt://``...) and HLS playlists
  (a URL whose path ends in ``.m3u8``): read through FFmpeg (PyAV) and re-muxed, video stream
  only and packets untouched, into a Matroska file (timestamps rounded to milliseconds).

Each read waits at most ``stall_s`` seconds for data (the socket timeout, FFmpeg's
``rw_timeout``), FFmpeg's reconnect options are off: a stall or a dropped connection is an
error, never a hang or a silently shorter video. Errors name the input as the user typed it
(the URL, or ``-``), as does the record's ``path``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from heke_runtime.errors import HekeError, VideoDecodeError, reason_of

STDIN = "-"
NETWORK_STALL_S = 60.0  # how long a read may wait for data when no --timeout is given
CHUNK = 1 << 20
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_HTTP = ("http", "https")
_PLAYLIST_SUFFIXES = (".m3u8",)


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
def local_copy(source: str, *, stall_s: float | None = None) -> Iterator[str]:
    """A local path holding ``source``: the path itself for a regular file, otherwise a
    temporary copy (module docstring), deleted on exit. Errors raised inside the block that
    name the copy are raised again naming ``source``."""
    if not is_stream(source):
        yield source
        return
    stall = NETWORK_STALL_S if stall_s is None else stall_s
    suffix = Path(urllib.parse.urlsplit(source).path).suffix if is_url(source) else ""
    handle, name = tempfile.mkstemp(prefix="heke-input-", suffix=_safe_suffix(suffix))
    os.close(handle)
    try:
        _spool(source, Path(name), stall)
        try:
            yield name
        except HekeError as exc:
            if name not in str(exc):
                raise
            raise _renamed(exc, name, source) from exc
    finally:
        Path(name).unlink(missing_ok=True)


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


def _spool(source: str, dest: Path, stall_s: float) -> None:
    scheme = urllib.parse.urlsplit(source).scheme.lower() if is_url(source) else ""
    if not scheme:
        _spool_pipe(source, dest)
    elif scheme in _HTTP and not _is_playlist(source):
        _spool_http(source, dest, stall_s)
    else:
        _remux(source, dest, stall_s)


def _is_playlist(url: str) -> bool:
    return urllib.parse.urlsplit(url).path.lower().endswith(_PLAYLIST_SUFFIXES)


def _spool_pipe(source: str, dest: Path) -> None:
    what = "standard input" if source == STDIN else "pipe"
    try:
        if source == STDIN:
            copied = _copy(sys.stdin.buffer, dest)
        else:
            with open(source, "rb") as pipe:
                copied = _copy(pipe, dest)
    except OSError as exc:
        raise VideoDecodeError(f"{source}: cannot read {what}: {reason_of(exc)}") from exc
    if not copied:
        raise VideoDecodeError(f"{source}: {what} is empty")


def _copy(stream: BinaryIO, dest: Path) -> int:
    with dest.open("wb") as out:
        shutil.copyfileobj(stream, out, CHUNK)
        return out.tell()


def _spool_http(url: str, dest: Path, stall_s: float) -> None:
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
            while chunk := response.read(CHUNK):
                out.write(chunk)
                got += len(chunk)
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


def _remux(url: str, dest: Path, stall_s: float) -> None:
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
            stream = source.streams.video[0]
            with av.open(str(dest), "w", format="matroska") as out:
                copy = out.add_stream_from_template(stream)
                for packet in source.demux(stream):
                    if packet.dts is None:
                        continue  # the flush packet demux() ends with
                    packet.stream = copy
                    out.mux(packet)
    except (av.FFmpegError, OSError) as exc:
        raise VideoDecodeError(f"{url}: cannot read: {reason_of(exc)}") from exc


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count} bytes"


__all__ = ["NETWORK_STALL_S", "STDIN", "is_stream", "is_url", "local_copy"]
