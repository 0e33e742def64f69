"""``heke-run`` on live protocols, served on 127.0.0.1 by a real FFmpeg in listen mode (RTMP,
MPEG-TS over TCP), and on network stalls: a server that sends half a video, then nothing.

A live protocol carries no length: its stream ends when the server closes the connection,
which FFmpeg reports as an I/O error after the last packet. Such a video must score exactly
like the file served, with a warning saying so; a stall must be an error naming the input.

The FFmpeg command-line tool is the server (PyAV cannot listen for RTMP): without it these
tests skip, except under ``CI`` (``.ci/run`` installs it), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from heke_runtime.errors import VideoDecodeError
from heke_runtime.results import read_records
from heke_runtime.sources import local_copy
from tests.rtsp_server import RtspServer
from tests.test_backends import tiny_engine
from tests.test_pipeline import wait_for
from tests.test_sources import free_port, no_proxy, run  # noqa: F401 (no_proxy: autouse)
from tests.videos import make_video

STALL_S = 1.0
NO_PIPELINE = ("--timeout", "5", "--workers", "0")  # a usage error heke-run checks late


@pytest.fixture(scope="module")
def engine() -> str:
    return str(tiny_engine("r2p1d_HEKE_4"))


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("CI is set but the ffmpeg tool is missing; .ci/run installs it")
    pytest.skip("no ffmpeg tool to serve RTMP; CI=true makes this a failure")


@pytest.fixture
def clip(tmp_path) -> Path:
    path = tmp_path / "clip.mkv"
    make_video(path, codec="libx264", frames=30, size=(48, 32))
    return path


def listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:``port`` (read from the kernel: a probing
    connection would be taken as the server's one client)."""
    wanted = f"0100007F:{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(line.split()[1] == wanted and line.split()[3] == "0A" for line in lines):
            return True
    return False


@contextmanager
def ffmpeg_serving(
    ffmpeg: str, video: Path, fmt: str, url: str, port: int, *, endless: bool = False
) -> Iterator[None]:
    """FFmpeg serving ``video``'s packets once, as ``fmt``, to the first client of ``url``;
    ``endless``: looped forever at the video's own pace, as a live stream."""
    command = [ffmpeg, "-hide_banner", "-loglevel", "error"]
    command += ["-stream_loop", "-1", "-re"] if endless else []
    command += ["-i", str(video), "-c", "copy", "-f", fmt]
    command += [*(["-listen", "1"] if url.startswith("rtmp") else []), url]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            if server.poll() is not None:
                pytest.fail(f"ffmpeg did not serve {url}: {server.stderr.read()}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"ffmpeg never listened on {url}"
            time.sleep(0.05)
        yield
        if not endless:
            server.wait(timeout=60)
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize(
    ("fmt", "scheme"),
    [("flv", "rtmp://127.0.0.1:{port}/live/clip"), ("mpegts", "tcp://127.0.0.1:{port}")],
)
def test_a_live_stream_scores_like_the_file_served(
    tmp_path, capsys, engine, ffmpeg, clip, fmt, scheme
):
    port = free_port()
    url = scheme.format(port=port)
    served = url + "?listen=1" if url.startswith("tcp") else url
    out = tmp_path / "r.jsonl"
    with ffmpeg_serving(ffmpeg, clip, fmt, served, port):
        code, _, err = run(capsys, clip, url, "-e", engine, "-o", out)
    assert code == 0, err
    file_record, live_record = read_records(out)
    assert live_record["path"] == url
    assert live_record["status"] == "ok", live_record.get("error")
    assert live_record["scores"] == file_record["scores"]  # the same packets, re-muxed
    assert live_record["video"]["num_frames"] == 30
    ended = f"{url}: the stream ended after 30 video packets, when the server closed the"
    assert any(w.startswith(ended) for w in live_record["warnings"]), live_record["warnings"]
    others = [w for w in live_record["warnings"] if not w.startswith(ended)]
    assert others == file_record["warnings"]  # the clip's own: 30 frames is short


def test_rtsp_scores_like_the_file_served(tmp_path, capsys, engine, ffmpeg, clip):
    # FFmpeg gives RTSP's first packets no timestamps (the keyframe has neither pts nor dts):
    # they are stamped, not dropped, or the first frames would not decode.
    server = RtspServer(ffmpeg, clip)
    out = tmp_path / "r.jsonl"
    try:
        code, _, err = run(capsys, clip, server.url, "-e", engine, "-o", out)
    finally:
        server.close()
    assert code == 0, err
    assert server.methods == ["OPTIONS", "DESCRIBE", "SETUP", "SETUP", "PLAY"]  # UDP refused
    file_record, rtsp_record = read_records(out)
    assert rtsp_record["status"] == "ok", rtsp_record.get("error")
    assert rtsp_record["video"]["num_frames"] == 30
    assert rtsp_record["scores"] == file_record["scores"]  # the same frames


def test_stream_seconds_scores_the_start_of_a_stream_that_never_ends(
    tmp_path, capsys, engine, ffmpeg, clip
):
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/clip"
    out = tmp_path / "r.jsonl"
    with ffmpeg_serving(ffmpeg, clip, "flv", url, port, endless=True):
        options = ("--stream-seconds", "2", "--timeout", "60")  # unplumbed: fails, not hangs
        code, _, err = run(capsys, url, "-e", engine, "-o", out, *options)
    assert code == 0, err
    (record,) = read_records(out)
    assert record["status"] == "ok", record.get("error")
    # 2 s at the clip's 25 fps, across the loop's seam (FFmpeg keeps timestamps rising).
    assert record["video"]["num_frames"] == 50
    read = f"{url}: read the stream's first 2 s (50 video packets), as --stream-seconds asks"
    assert any(w.startswith(read) for w in record["warnings"]), record["warnings"]
    assert not any("server closed" in w for w in record["warnings"])


def test_a_stream_given_up_on_leaves_no_copy_behind(tmp_path, engine, ffmpeg, clip):
    # Without --stream-seconds an endless feed outlives --timeout: the pipeline gives up on
    # it, and the copy stops at the same limit; should the run end first, its exit removes
    # the copy.
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/clip"
    spool = tmp_path / "spool"
    spool.mkdir()
    command = [sys.executable, "-m", "heke_runtime.cli", url, "-e", engine, "--timeout", "2"]
    with ffmpeg_serving(ffmpeg, clip, "flv", url, port, endless=True):
        done = subprocess.run(
            command, env={**os.environ, "TMPDIR": str(spool)}, capture_output=True, text=True
        )
    assert done.returncode == 1, done.stderr
    assert f"FAILED {url}: " in done.stderr
    assert list(spool.glob("heke-input-*")) == []  # (other libraries write there too)


def test_a_copy_stops_at_its_deadline_and_is_deleted(tmp_path, monkeypatch, ffmpeg, clip):
    # --timeout bounds the whole copy: an endless feed read without --stream-seconds stops
    # at it (over FFmpeg's protocols and over HTTP), instead of writing until the run ends.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/clip"
    with (
        ffmpeg_serving(ffmpeg, clip, "flv", url, port, endless=True),
        pytest.raises(VideoDecodeError) as raised,
        local_copy(url, deadline_s=2),
    ):
        pass
    said = rf"{re.escape(url)}: reading took longer than 2 s \(--timeout\) after (\d+) video "
    found = re.fullmatch(said + "packets; stopped", str(raised.value))
    assert found, raised.value
    assert 0 < int(found[1]) <= 4 * 25  # at the feed's pace (25 fps), not the whole loop
    with trickling_server() as port:
        url = f"http://127.0.0.1:{port}/live.ts"
        with pytest.raises(VideoDecodeError) as raised, local_copy(url, deadline_s=1):
            pass
    said = rf"{re.escape(url)}: reading took longer than 1 s \(--timeout\) after \d+ bytes"
    assert re.fullmatch(said + "; stopped", str(raised.value)), raised.value
    assert list(tmp_path.glob("heke-input-*")) == []


def test_a_stream_given_up_on_stops_copying(tmp_path, monkeypatch, capsys, engine, ffmpeg, clip):
    # The pipeline gives up at --timeout, and the copy stops at the same limit: its thread
    # ends and deletes the copy soon after, instead of copying the endless feed until the
    # run exits.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/clip"
    with ffmpeg_serving(ffmpeg, clip, "flv", url, port, endless=True):
        code, _, err = run(capsys, url, "-e", engine, "--timeout", "2")
        assert code == 1 and f"FAILED {url}: " in err, err
        wait_for(lambda: not list(tmp_path.glob("heke-input-*")), 30)
        assert list(tmp_path.glob("heke-input-*")) == []  # while the feed still runs


def test_stream_seconds_must_be_positive(capsys, engine, clip):
    for bad in ("0", "-1", "nan"):
        code, _, err = run(capsys, clip, "-e", engine, "--stream-seconds", bad)
        assert code == 2
        assert f"--stream-seconds {float(bad):g}: expected seconds, more than 0" in err
    # Any positive value is taken: the next check (one that comes after it) speaks instead.
    code, _, err = run(capsys, clip, "-e", engine, "--stream-seconds", "0.5", *NO_PIPELINE)
    assert code == 2 and "--stream-seconds" not in err and "--timeout needs the pipeline" in err


@contextmanager
def tcp_server(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that runs ``handle(connection, done)`` in a thread for each
    client; ``done`` is set when the block ends."""
    done = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while not done.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(client, done), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        listener.close()


def stalling_server(payload: bytes) -> AbstractContextManager[int]:
    """Sends ``payload`` to each client, then holds the connection open, silent."""

    def handle(client: socket.socket, done: threading.Event) -> None:
        with client:
            client.sendall(payload)
            done.wait()

    return tcp_server(handle)


def trickling_server() -> AbstractContextManager[int]:
    """An HTTP server whose body, of no stated length, never ends: 100 bytes every 10 ms (a
    stall limit never fires)."""

    def handle(client: socket.socket, done: threading.Event) -> None:
        with client, contextlib.suppress(OSError):  # the reader may hang up
            client.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\n\r\n")
            while not done.wait(0.01):
                client.sendall(b"\x47" * 100)

    return tcp_server(handle)


def http_head(size: int) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode()


def test_a_stall_is_an_error_naming_the_url(tmp_path, clip):
    # Long enough that FFmpeg's probing ends before the stall, which comes mid-stream.
    long = make_video(tmp_path / "long.ts", codec="libx264", frames=300, size=(160, 120))
    data = long.read_bytes()
    with stalling_server(data[: len(data) // 2]) as port:
        url = f"tcp://127.0.0.1:{port}"
        with pytest.raises(VideoDecodeError) as raised, local_copy(url, stall_s=STALL_S):
            pass
    assert str(raised.value).startswith(f"{url}: no data for 1 s after ")
    assert str(raised.value).endswith(" video packets (network stall)")

    body = clip.read_bytes()
    with stalling_server(http_head(len(body)) + body[: len(body) // 2]) as port:
        url = f"http://127.0.0.1:{port}/clip.mkv"
        with pytest.raises(VideoDecodeError) as raised, local_copy(url, stall_s=STALL_S):
            pass
    assert len(body) // 2 < 100_000  # so the count reads in bytes
    assert (
        str(raised.value) == f"{url}: no data for 1 s after {len(body) // 2} bytes (network stall)"
    )


def test_a_stalled_input_fails_alone(tmp_path, capsys, engine, clip):
    body = clip.read_bytes()
    out = tmp_path / "r.jsonl"
    with stalling_server(http_head(len(body)) + body[:100]) as port:
        url = f"http://127.0.0.1:{port}/clip.mkv"
        code, _, err = run(capsys, url, clip, "-e", engine, "-o", out, "--timeout", "2")
    assert code == 1, err
    stalled, good = read_records(out)
    assert stalled["status"] == "error"
    # The read's stall limit and the pipeline's --timeout are both 2 s: either may speak first.
    reasons = ("no data for 2 s after 100 bytes (network stall)", "decoding took longer than 2 s")
    assert stalled["error"].startswith(reasons), stalled["error"]
    assert f"FAILED {url}: {stalled['error']}" in err
    assert good["status"] == "ok", good.get("error")


def test_a_protocol_ffmpeg_lacks_is_named(tmp_path, capsys, engine, clip):
    out = tmp_path / "r.jsonl"
    url = "nosuch://127.0.0.1/clip"
    code, _, err = run(capsys, url, clip, "-e", engine, "-o", out)
    assert code == 1
    missing, good = read_records(out)
    reason = "this FFmpeg (PyAV's build) cannot read nosuch:// (protocol not found)"
    assert missing["error"] == reason
    assert f"FAILED {url}: {reason}" in err
    assert good["status"] == "ok"
