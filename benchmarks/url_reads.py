"""Reading a video over HTTP: heke's one download, against a reader that seeks over the network.

heke copies a URL to a temporary file in one sequential pass, then indexes and samples the
copy (runtime/heke_runtime/sources.py). The alternative, for servers that take byte ranges,
reads the URL in place: FFmpeg's http protocol seeks with Range requests. Its index pass still
reads every packet (the exact frame count needs them all), then each sampled snippet is a
seek, a new request and a decode from the keyframe before it.

Both sides run against one HTTP server on 127.0.0.1 that serves ranges and counts the bytes
and requests it answers; ``--mbit`` caps its rate and ``--rtt-ms`` delays each request's
first byte, to stand for a network. Each side must end with the same sampled frames.

    python benchmarks/url_reads.py                      # 60 s of 720p, loopback and 100 Mbit/s
    python benchmarks/url_reads.py --seconds 20 --mbit 0 --rtt-ms 0
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import numpy as np

from heke_bench.inputs import pattern_video
from heke_bench.system import cpu
from heke_runtime.decode import probe_video, read_frames
from heke_runtime.sampling import clip_plan
from heke_runtime.sources import local_copy

CHUNK = 64 * 1024


class Counting(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, data: bytes, mbit: float, rtt_s: float) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.data, self.mbit, self.rtt_s = data, mbit, rtt_s
        self.sent = 0
        self.requests = 0
        self.lock = threading.Lock()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/video.mp4"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a reader that seeks closes connections mid-response: not an error here

    def reset(self) -> None:
        with self.lock:
            self.sent, self.requests = 0, 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Counting

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        data = self.server.data
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        first = int(match[1]) if match else 0
        last = int(match[2]) if match and match[2] else len(data) - 1
        with self.server.lock:
            self.server.requests += 1
        time.sleep(self.server.rtt_s)
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        self.send_header("Content-Length", str(last + 1 - first))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._paced(data[first : last + 1])

    def _paced(self, body: bytes) -> None:
        start = time.perf_counter()
        for offset in range(0, len(body), CHUNK):
            part = body[offset : offset + CHUNK]
            try:
                self.wfile.write(part)
            except OSError:
                return  # the reader closed this request (a seek): what it read is counted
            with self.server.lock:
                self.server.sent += len(part)
            if self.server.mbit:
                due = start + (offset + len(part)) * 8 / (self.server.mbit * 1e6)
                time.sleep(max(0.0, due - time.perf_counter()))


def heke_side(url: str, snippets: int) -> dict[int, np.ndarray]:
    """heke-run's path: one download, then the index pass and the seeks on the copy."""
    with local_copy(url) as local:
        info = probe_video(local)
        wanted = np.unique(clip_plan(info.num_frames, snippets))
        return dict(read_frames(local, wanted, info=info))


def in_place_side(url: str, snippets: int) -> dict[int, np.ndarray]:
    """A reader over the network: every packet once for the index, then one seek per snippet
    (to the keyframe before it, as heke's seeking does) and the frames decoded from there.
    Requests on one kept-alive connection (``multiple_requests``): without it, FFmpeg 8.1
    read an MP4 whose index is at its end without its first packet from this server."""
    with av.open(url, container_options={"multiple_requests": "1"}) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.dts is not None]
        shown = sorted(p.pts for p in packets if p.pts is not None)
        keyframes = sorted(p.pts for p in packets if p.is_keyframe and p.pts is not None)
        plan = clip_plan(len(shown), snippets)
        frames: dict[int, np.ndarray] = {}
        for row in np.asarray(plan):
            targets = {shown[i]: int(i) for i in np.unique(row)}
            start = max((k for k in keyframes if k <= min(targets)), default=keyframes[0])
            container.seek(start, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts in targets:
                    frames[targets[frame.pts]] = frame.to_ndarray(format="rgb24")
                if frame.pts is not None and frame.pts >= max(targets):
                    break
        return frames


def measure(server: Counting, side: Any, snippets: int) -> tuple[dict[str, float], dict]:
    server.reset()
    start = time.perf_counter()
    frames = side(server.url(), snippets)
    seconds = time.perf_counter() - start
    figures = {
        "seconds": round(seconds, 3),
        "bytes_served": server.sent,
        "of_file": round(server.sent / len(server.data), 3),
        "requests": server.requests,
    }
    return figures, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="video length (720p, 25 fps)")
    parser.add_argument("--snippets", type=int, default=12)
    parser.add_argument("--mbit", type=float, nargs="*", default=[0, 100], help="0: no cap")
    parser.add_argument("--rtt-ms", type=float, default=20, help="delay before each response")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "heke-bench")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    video = pattern_video(args.workdir, (1280, 720), args.seconds * 25)
    data = video.read_bytes()
    machine = cpu()
    name, load = machine.get("name", platform.machine()), machine.get("load_average")
    print(f"# {name}, load {load}, PyAV {av.__version__}")
    print(f"# {video.name}: {len(data) / 1e6:.1f} MB, {args.snippets} snippets")
    for mbit in args.mbit:
        rtt = args.rtt_ms / 1000 if mbit else 0.0
        server = Counting(data, mbit, rtt)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            heke, heke_frames = measure(server, heke_side, args.snippets)
            direct, direct_frames = measure(server, in_place_side, args.snippets)
        finally:
            server.shutdown()
            server.server_close()
        same = heke_frames.keys() == direct_frames.keys() and all(
            np.array_equal(heke_frames[i], direct_frames[i]) for i in heke_frames
        )
        line = {
            "link": f"{mbit:g} Mbit/s, {rtt * 1000:g} ms per request" if mbit else "loopback",
            "download_once": heke,
            "seek_in_place": direct,
            "same_frames": same,
            "time_ratio": round(direct["seconds"] / heke["seconds"], 2),
        }
        print(json.dumps(line))


if __name__ == "__main__":
    main()
