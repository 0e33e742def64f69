"""``heke-run`` on inputs that are not local files: URLs served by a real HTTP server on
127.0.0.1 (byte ranges, a streamed response without them, a connection dropped halfway, a
404), standard input and a named pipe. Each must score exactly like the same local file."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from heke_runtime.cli import main
from heke_runtime.results import read_records
from heke_runtime.scorer import InputItem, expand_inputs
from heke_runtime.sources import is_stream, is_url
from tests.test_backends import tiny_engine
from tests.videos import make_video, remux


class Handler(BaseHTTPRequestHandler):
    """Serves the files of ``server.root`` under ``/range/`` (byte ranges), ``/stream/`` (no
    length, no ranges: read to the end of the connection) and ``/drop/`` (the full
    Content-Length, then the connection closes halfway); anything else is a 404."""

    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: object) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:
        mode, _, name = self.path.lstrip("/").partition("/")
        file = self.server.root / name
        if mode not in ("range", "stream", "drop") or not name or not file.is_file():
            self._send(404, b"not found\n", "text/plain")
            return
        data = file.read_bytes()
        self.server.requests.append((mode, self.headers.get("Range")))
        if mode == "stream":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for first in range(0, len(data), 4096):
                self.wfile.write(data[first : first + 4096])
            self.close_connection = True
        elif mode == "drop":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self._ranged(data)

    def _ranged(self, data: bytes) -> None:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if not match:
            self._send(200, data, "video/mp4", ranges=True)
            return
        first = int(match[1])
        last = int(match[2]) if match[2] else len(data) - 1
        if first >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        part = data[first : last + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{first + len(part) - 1}/{len(data)}")
        self._body(part, "video/mp4", ranges=True)

    def _send(self, code: int, body: bytes, kind: str, *, ranges: bool = False) -> None:
        self.send_response(code)
        self._body(body, kind, ranges=ranges)

    def _body(self, body: bytes, kind: str, *, ranges: bool) -> None:
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = root
        self.requests: list[tuple[str, str | None]] = []

    def url(self, mode: str, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{mode}/{name}"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    make_video(root / "a.mp4", frames=30)
    make_video(root / "b.mkv", codec="libx264", frames=30, size=(48, 32))
    httpd = Server(root)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def engine() -> str:
    return str(tiny_engine("r2p1d_HEKE_4"))


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def same_scores(record: dict, reference: dict) -> None:
    assert record["status"] == "ok", record.get("error")
    assert record["scores"] == reference["scores"]
    assert record["snippets"] == reference["snippets"]
    assert record["video"] == reference["video"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_inputs_that_are_not_files_are_kept_as_given(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("https://example.invalid/x.mp4\n")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    items = expand_inputs(["-", "rtmp://host/live", "-", f"@{listing}", str(fifo)])
    assert items == [
        InputItem("-"),
        InputItem("rtmp://host/live"),
        InputItem("https://example.invalid/x.mp4"),
        InputItem(str(fifo)),
    ]
    assert is_url("https://h/a.mp4") and not is_url("C:/videos/a.mp4") and not is_url("a.mp4")
    assert is_stream(str(fifo)) and not is_stream(str(listing))


def test_urls_score_like_the_local_files(tmp_path, capsys, engine, server):
    local = [server.root / "a.mp4", server.root / "b.mkv"]
    urls = [server.url("range", "a.mp4"), server.url("stream", "b.mkv")]
    out = tmp_path / "r.jsonl"
    code, _, err = run(capsys, *local, *urls, "-e", engine, "-o", out, "--timeout", "60")
    assert code == 0, err
    records = read_records(out)
    assert [r["path"] for r in records] == [*map(str, local), *urls]
    same_scores(records[2], records[0])
    same_scores(records[3], records[1])
    assert {mode for mode, _ in server.requests} == {"range", "stream"}


def test_a_dropped_connection_fails_alone(tmp_path, capsys, engine, server):
    dropped = server.url("drop", "a.mp4")
    missing = server.url("range", "nothing.mp4")
    unreachable = f"http://127.0.0.1:{free_port()}/a.mp4"
    local = server.root / "a.mp4"
    out = tmp_path / "r.jsonl"
    spool = Path(os.environ.get("TMPDIR", "/tmp"))
    before = set(spool.glob("heke-input-*"))  # another process's are not this run's
    code, _, err = run(capsys, dropped, local, missing, unreachable, "-e", engine, "-o", out)
    assert code == 1
    records = read_records(out)
    assert [r["status"] for r in records] == ["error", "ok", "error", "error"]
    size = local.stat().st_size
    assert records[0]["error"] == (
        f"connection dropped after {size // 2} bytes of {size} bytes (the server closed it early)"
    )
    assert records[2]["error"] == "HTTP 404 Not Found"
    assert records[3]["error"].startswith("cannot connect (")
    failures = [line for line in err.splitlines() if "FAILED" in line]
    assert failures[0] == f"heke-run: FAILED {dropped}: {records[0]['error']}"
    assert set(spool.glob("heke-input-*")) <= before


def test_standard_input_scores_like_the_file(tmp_path, engine, server):
    video = server.root / "a.mp4"
    out = tmp_path / "r.jsonl"
    command = [sys.executable, "-m", "heke_runtime.cli", str(video), "-", "-e", engine]
    done = subprocess.run(
        [*command, "-o", str(out)], input=video.read_bytes(), capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()
    file_record, stdin_record = read_records(out)
    assert stdin_record["path"] == "-"
    same_scores(stdin_record, file_record)


def test_empty_standard_input_is_an_error(tmp_path, capsys, monkeypatch, engine, server):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    out = tmp_path / "r.jsonl"
    code, _, err = run(capsys, "-", server.root / "a.mp4", "-e", engine, "-o", out)
    assert code == 1
    records = read_records(out)
    assert [r["status"] for r in records] == ["error", "ok"]
    assert records[0]["error"] == "standard input is empty"
    assert "heke-run: FAILED -: standard input is empty" in err


def test_a_named_pipe_is_spooled(tmp_path, capsys, engine, server):
    video = server.root / "a.mp4"
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(video.read_bytes())

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out = tmp_path / "r.jsonl"
    code, _, err = run(capsys, video, fifo, "-e", engine, "-o", out, "--timeout", "60")
    writer.join(10)
    assert code == 0, err
    file_record, pipe_record = read_records(out)
    assert pipe_record["path"] == str(fifo)
    same_scores(pipe_record, file_record)


def test_an_hls_playlist_is_read_through_ffmpeg(tmp_path, capsys, engine, server):
    folder = server.root / "hls"
    folder.mkdir()
    options = {"hls_time": "0.4", "hls_list_size": "0"}
    remux(server.root / "a.mp4", folder / "index.m3u8", "hls", options=options)
    playlist = server.url("range", "hls/index.m3u8")
    out = tmp_path / "r.jsonl"
    code, _, err = run(capsys, server.root / "a.mp4", playlist, "-e", engine, "-o", out)
    assert code == 0, err
    file_record, hls_record = read_records(out)
    assert hls_record["path"] == playlist
    assert hls_record["scores"] == file_record["scores"]  # the same packets, re-muxed
    assert hls_record["video"]["num_frames"] == file_record["video"]["num_frames"]
