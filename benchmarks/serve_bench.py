"""heke-serve under load, on loopback: throughput against heke-run's, latency at 1/4/8
clients, memory over many requests, and a mixed run of good and bad requests.

    python benchmarks/serve_bench.py [--engine E.onnx] [--videos 8] [--size 1280x720]
        [--seconds 10] [--rounds 2] [--requests 500] [--clients 1,4,8] [--latency-requests 8]

Targets (README, Serving; figures in benchmarks/RESULTS.md):
- throughput at saturation, 8 concurrent clients uploading the same videos: at least 90% of
  heke-run's videos/s on those videos (heke-run's own pipeline, in-process, same engine and
  settings' defaults); the two alternate ``--rounds`` times and the best round of each counts;
- p50/p99 latency of one ``--seconds`` clip at ``--size`` with 1, 4 and 8 clients;
- ``--requests`` sequential requests: the server's peak RSS grows at most 5% from request 50
  to the last, and no temporary file is left;
- a mixed run (good clips, damaged files, oversize uploads, bad tokens, all at once): every
  good request scored, every bad one its status, none lost.

The engine defaults to the tiny demo model, whose input is the full model's (decoding and
preprocessing are the real work) with almost no compute: the worst case for a service's
overheads, which the full model's seconds per video would hide. Every number is loopback
only: the requests never leave this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/: the videos and the server harness

import httpx  # noqa: E402

from heke_bench.inputs import demo_spec, onnx_engine, pattern_video  # noqa: E402
from heke_bench.system import describe  # noqa: E402
from heke_runtime.scorer import Scorer  # noqa: E402
from tests.servers import Server, upload  # noqa: E402
from tests.videos import make_video, truncate_file  # noqa: E402

TOKEN = "bench-token"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", type=Path, help="ONNX engine (default: tiny demo model)")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--latency-requests", type=int, default=8, help="per client count")
    return parser.parse_args()


def make_inputs(folder: Path, args: argparse.Namespace) -> tuple[Path, list[Path], Path]:
    engine = args.engine or onnx_engine(folder, demo_spec("r2p1d_HEKE_4", tiny=True))
    width, height = map(int, args.size.split("x"))
    frames = int(args.seconds * 25)
    clips = []
    for i in range(args.videos):  # distinct files, so no cache of any kind can help
        clips.append(pattern_video(folder, (width, height), frames + i))
    small = make_video(folder / "small.mp4", size=(320, 240), frames=50)
    return Path(engine), clips, small


# --------------------------------------------------------------------------- measurements


def heke_run_rate(engine: Path, clips: Sequence[Path]) -> float:
    """Videos per second of heke-run's pipeline (in-process: no start-up in the figure)."""
    with Scorer(engine) as scorer:
        start = time.perf_counter()
        results = list(scorer.score_many(clips))
        elapsed = time.perf_counter() - start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return len(clips) / elapsed


def serve_rate(server: Server, clips: Sequence[Path], clients: int) -> float:
    """Videos per second with ``clients`` threads uploading ``clips`` as fast as answered."""
    with server.client(TOKEN, timeout=600) as c:
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            codes = list(pool.map(lambda p: upload(c, p).status_code, clips))
        elapsed = time.perf_counter() - start
    assert codes == [200] * len(clips), codes
    return len(clips) / elapsed


def latencies(server: Server, clip: Path, clients: int, each: int) -> list[float]:
    """Seconds from request to record, ``each`` requests per client, all clients at once."""

    def one_client(_: int) -> list[float]:
        times = []
        with server.client(TOKEN, timeout=600) as c:
            for _ in range(each):
                start = time.perf_counter()
                assert upload(c, clip).status_code == 200
                times.append(time.perf_counter() - start)
        return times

    with ThreadPoolExecutor(clients) as pool:
        return [t for times in pool.map(one_client, range(clients)) for t in times]


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def memory_run(server: Server, clip: Path, requests: int) -> dict[str, float]:
    """Peak RSS (VmHWM) after request 50 and after the last, and the current RSS."""
    marks: dict[str, float] = {}
    with server.client(TOKEN) as c:
        for i in range(1, requests + 1):
            assert upload(c, clip).status_code == 200
            if i in (50, requests):
                marks[f"peak_{i}"] = rss_kib(server.proc.pid, "VmHWM") / 1024
                marks[f"rss_{i}"] = rss_kib(server.proc.pid, "VmRSS") / 1024
    marks["left_files"] = len(server.temp_files())
    return marks


def mixed_run(server: Server, folder: Path, clips: Sequence[Path]) -> dict[str, dict[int, int]]:
    """Good, damaged, oversize and unauthorised requests at once, by what each should get."""
    damaged = truncate_file(clips[0], folder / "damaged.mp4", 0.4)
    text = folder / "text.mp4"
    text.write_text("not a video\n")
    big = folder / "big.mp4"
    big.write_bytes(os.urandom(3 * 2**20))
    kinds: list[tuple[str, int, Callable[[httpx.Client], int]]] = []
    for path in clips:
        kinds.append(("good", 200, lambda c, p=path: upload(c, p).status_code))
    for path in (damaged, text) * 2:
        kinds.append(("bad video", 422, lambda c, p=path: upload(c, p).status_code))
    kinds += [("oversize", 413, lambda c: upload(c, big).status_code)] * 2

    with server.client(TOKEN, timeout=600) as c, server.client("wrong") as wrong:
        kinds += [("bad token", 401, lambda _c: upload(wrong, clips[0]).status_code)] * 4
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda k: (k[0], k[1], k[2](c)), kinds))
    table: dict[str, dict[int, int]] = {}
    for kind, _, code in got:
        table.setdefault(kind, {}).setdefault(code, 0)
        table[kind][code] += 1
    return table


# --------------------------------------------------------------------------- the run


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    args = parse()
    info = describe()
    print(f"machine: {info['cpu']}")
    print(f"versions: {info['versions']}")
    with tempfile.TemporaryDirectory(prefix="heke-serve-bench-") as tmp:
        folder = Path(tmp)
        engine, clips, small = make_inputs(folder, args)
        print(f"engine: {engine.name}; {len(clips)} videos {args.size}, {args.seconds:g} s")
        token = folder / "token"
        token.write_text(TOKEN)
        server = Server(engine, "--token-file", token, "--max-upload-mb", "2", tmp=folder / "srv")
        try:
            run_rounds(server, engine, clips, args)
            run_latency(server, clips[0], args)
            print(f"mixed run: {mixed_run(server, folder, clips)}")
        finally:
            print(f"server stopped with exit status {server.stop()}")
        # A fresh server: the peak RSS of the runs above (720p videos) would hide any growth.
        fresh = Server(engine, "--token-file", token, tmp=folder / "srv-memory")
        try:
            marks = memory_run(fresh, small, args.requests)
        finally:
            print(f"memory server stopped with exit status {fresh.stop()}")
        growth = marks[f"peak_{args.requests}"] / marks["peak_50"] - 1
        print(f"memory over {args.requests} sequential requests (MiB): {marks}")
        print(f"peak RSS growth from request 50 to {args.requests}: {growth:+.2%} (target <= 5%)")


def run_rounds(
    server: Server, engine: Path, clips: Sequence[Path], args: argparse.Namespace
) -> None:
    run_rates, serve_rates = [], []
    for i in range(args.rounds):  # interleaved: the machine's load hits both alike
        run_rates.append(heke_run_rate(engine, clips))
        serve_rates.append(serve_rate(server, clips, 8))
        print(
            f"round {i + 1}: heke-run {run_rates[-1]:.3f} videos/s, "
            f"heke-serve (8 clients) {serve_rates[-1]:.3f} videos/s"
        )
    ratio = max(serve_rates) / max(run_rates)
    print(f"throughput: heke-serve / heke-run = {ratio:.1%} (target >= 90%)")


def run_latency(server: Server, clip: Path, args: argparse.Namespace) -> None:
    for clients in map(int, args.clients.split(",")):
        times = latencies(server, clip, clients, args.latency_requests)
        print(
            f"latency, {clients} clients, {len(times)} requests: "
            f"p50 {statistics.median(times):.3f} s, p99 {percentile(times, 0.99):.3f} s"
        )


if __name__ == "__main__":
    main()
