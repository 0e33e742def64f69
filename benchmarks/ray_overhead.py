"""Ray's cost: ``heke-corpus`` on one CPU worker vs the single-machine ``Scorer``, then 1 vs 2
workers; and the per-video decode and model costs the README's cluster estimate uses.

Target (issue "corpus scale"): Ray with one CPU worker at most 15% slower than the Scorer on
the same corpus and the same core.

    python benchmarks/ray_overhead.py [--videos 40] [--size 640x360] [--frames 75] [--rounds 3]
                                      [--engine ENGINE.onnx] [--full-engine FULL.onnx]

The corpus is generated (tests/videos.py patterns, H.264) and scored with the tiny model
unless ``--engine`` names another: its preprocessing, hence what each video sends through
Ray's object store, is the full model's (the block sums of the sampled frames: 16 MiB at
640x360 and 75 frames, where the model's float32 input is 63 MiB). Every configuration is
checked to give the Scorer's scores.

"One CPU worker" means one core: the Scorer (one ONNX Runtime thread) runs pinned to core 0,
and so does the whole Ray cluster (head, driver, a one-CPU worker node holding one engine
actor and one decode task, each allotted half its CPU). Two workers add a second one-CPU
node pinned to core 1. Ray's workers run at the Scorer's priority (``RAY_worker_niceness=0``).

Each configuration scores a fifth of the corpus, then all of it: the difference per extra
video is the cost without the fixed ones (starting workers and actors, loading the engine),
which is what a corpus of millions sees; the full run's time, fixed costs included, is shown
too, as is the cluster's start. Wall times suffer from anything else running on the machine;
the CPU seconds (of this process and all it started, Ray's daemons included) less so. The
one-core pair runs ``--rounds`` times, interleaved, and the overhead compares the best round
of each. ``--full-engine`` also times the full-size model on one 1080p clip (minutes on a
CPU).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

TARGET_OVERHEAD = 0.15
TOLERANCE = 1e-6
STORE_BYTES = 2 * 2**30  # per worker node: room for ~30 tensors of a 640x360 video
BATCH = 4  # snippets per inference call, the same on both sides (backends' defaults differ)


def make_corpus(folder: Path, count: int, size: tuple[int, int], frames: int) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: tests/
    from tests.videos import make_video

    options = {"preset": "ultrafast", "crf": "28"}
    return [
        make_video(folder / f"v{i:03d}.mp4", size=size, frames=frames + i % 7, options=options)
        for i in range(count)
    ]


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent, start time, CPU seconds so far) for every process (Linux /proc)."""
    tick, table = os.sysconf("SC_CLK_TCK"), {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            table[int(entry)] = (int(fields[1]), fields[19], cpu)
    return table


class CpuMeter:
    """CPU seconds of this process and everything it starts, Ray's daemons and workers
    included. A thread samples /proc: Ray's raylet reaps its workers without adding their
    time to its own (``cutime``), so a process is counted by its last sample before it
    exits (at most ``period`` seconds of it can be missed)."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.seen: dict[tuple[int, str], float] = {}  # (pid, start time) -> CPU seconds
        self.base: dict[tuple[int, str], float] = {}  # what each had used before the start
        self._first = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        table, mine, todo = _processes(), set(), [os.getpid()]
        while todo:
            pid = todo.pop()
            mine.add(pid)
            todo += [child for child, row in table.items() if row[0] == pid]
        for pid in mine & table.keys():
            _, started, cpu = table[pid]
            self.seen[(pid, started)] = cpu
            self.base.setdefault((pid, started), cpu if self._first else 0.0)
        self._first = False

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self) -> CpuMeter:
        self._sample()  # what ran before the measurement does not count
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        return sum(cpu - self.base.get(key, 0.0) for key, cpu in self.seen.items())


@contextmanager
def pinned(cores: set[int]) -> Iterator[None]:
    """Run the block (and every process it starts) on ``cores`` only."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass(frozen=True)
class Run:
    videos: int
    wall_s: float
    cpu_s: float  # of the whole process tree: Ray's own processes included


@dataclass(frozen=True)
class Config:
    """One configuration run on a small and a large corpus: the difference is the cost per
    video without the fixed costs (worker and actor start, engine load), which is what a
    corpus of millions sees."""

    label: str
    small: Run
    large: Run

    def marginal(self) -> tuple[float, float]:
        videos = self.large.videos - self.small.videos
        wall = (self.large.wall_s - self.small.wall_s) / videos
        return wall, (self.large.cpu_s - self.small.cpu_s) / videos

    def line(self) -> str:
        wall, cpu = self.marginal()
        run = self.large
        return (
            f"{self.label:<34} {run.videos} videos in {run.wall_s:5.1f} s "
            f"({run.cpu_s / run.videos:.3f} CPU s/video) | per extra video: "
            f"wall {wall:.3f} s, CPU {cpu:.3f} s"
        )


def measure(work: Callable[[], object], videos: int) -> Run:
    with CpuMeter() as meter:
        wall = time.perf_counter()
        work()
        wall = time.perf_counter() - wall
    return Run(videos, wall, meter.seconds)


def scorer_config(
    engine: Path, sets: list[list[Path]], threads: int, label: str, scores: dict
) -> Config:
    """The Scorer on each set; the scores of the last land in ``scores``."""
    from heke_runtime.scorer import Scorer

    def score(videos: list[Path]) -> None:
        scores.clear()
        scores.update({str(v): scorer.score(v).scores for v in videos})

    with Scorer(
        engine, backend="onnxruntime-cpu", threads=threads, workers=0, batch_size=BATCH
    ) as scorer:
        runs = [measure(partial(score, s), len(s)) for s in sets]
    return Config(label, *runs)


def ray_config(
    engine: Path, sets: list[list[Path]], workers: int, work: Path, scores: dict
) -> Config:
    """``workers`` one-CPU nodes, node k pinned to core k; head and driver on core 0."""
    import ray
    from ray.cluster_utils import Cluster

    from heke_corpus import store
    from heke_corpus.run import CorpusOptions, run_corpus

    start = time.perf_counter()
    with pinned({0}):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for core in range(workers):
            with pinned({core}):  # Cluster's default store (150 MiB) would spill to disk
                cluster.add_node(num_cpus=1, object_store_memory=STORE_BYTES)
        cluster.wait_for_nodes()
        with pinned({0}):
            ray.init(address=cluster.address, logging_level=logging.ERROR)
            boot = time.perf_counter() - start
            options = CorpusOptions(
                batch_size=BATCH,
                actors=workers,
                actor_cpus=0.5,
                decode_cpus=0.5,
                flush_rows=10**6,
                overwrite=True,
            )

            def corpus(videos: list[Path], out: Path) -> None:
                run_corpus([str(v) for v in videos], engine, out, options=options)

            runs = [
                measure(partial(corpus, s, work / f"ray{workers}-{len(s)}"), len(s)) for s in sets
            ]
        records = store.read_results(work / f"ray{workers}-{len(sets[-1])}")
        scores.update({r["path"]: r["scores"] for r in records})
        return Config(f"Ray, {workers} worker(s) (start {boot:.1f} s)", *runs)
    finally:
        ray.shutdown()
        cluster.shutdown()


def check(label: str, got: dict, want: dict) -> None:
    assert got.keys() == want.keys(), f"{label}: not every video was scored"
    for path, scores in want.items():
        worst = max(abs(got[path][k] - v) for k, v in scores.items())
        assert worst <= TOLERANCE, f"{label}: {path} differs by {worst:g}"


def unit_costs(engine: Path, video: Path, repeats: int = 3) -> tuple[float, float, float, float]:
    """Median seconds on one core: decode + preprocess, model; the MiB of the input tensor and
    of what Ray ships instead (its block sums)."""
    from heke_runtime.scorer import Scorer, decode_video

    decode, model = [], []
    with (
        pinned({0}),
        Scorer(engine, backend="onnxruntime-cpu", threads=1, batch_size=BATCH) as scorer,
    ):
        for _ in range(repeats):
            start = time.perf_counter()
            decoded = scorer.decode(video)
            decode.append(time.perf_counter() - start)
            start = time.perf_counter()
            scorer.infer(decoded.inputs)
            model.append(time.perf_counter() - start)
    size = sum(a.nbytes for a in decoded.inputs.values()) / 2**20
    sums = decode_video(video, scorer.model, scorer.num_snippets, None, sums_only=True)
    shipped = sums.inputs["sums"].nbytes / 2**20
    return statistics.median(decode), statistics.median(model), size, shipped


def full_model_costs(engine: Path, folder: Path) -> None:
    from tests.videos import make_video

    clip = make_video(
        folder / "clip1080.mp4", size=(1920, 1080), frames=250,
        options={"preset": "ultrafast", "crf": "28"},
    )  # fmt: skip
    decode, model, mib, shipped = unit_costs(engine, clip, repeats=1)
    print(
        f"full model, 1080p 10 s clip, one core: decode+preprocess {decode:.2f} s, "
        f"model {model:.1f} s, tensor {mib:.0f} MiB (Ray ships {shipped:.0f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--frames", type=int, default=75)
    parser.add_argument("--engine", type=Path)
    parser.add_argument("--full-engine", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two cores (1 vs 2 workers)")
    # Ray starts its workers at nice 15; on a machine shared with other work that alone
    # would slow them against a Scorer at nice 0. Same priority for both.
    os.environ.setdefault("RAY_worker_niceness", "0")
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="heke-ray-bench-") as tmp:
        work = Path(tmp)
        engine = args.engine or tiny_engine(work)
        videos = make_corpus(work, args.videos, (width, height), args.frames)
        decode, model, mib, shipped = unit_costs(engine, videos[0])
        print(f"{len(videos)} videos {args.size}, engine {engine.name}")
        print(f"per video, one core: decode+preprocess {decode:.3f} s, model {model:.3f} s, "
              f"tensor {mib:.0f} MiB (Ray ships its block sums: {shipped:.0f} MiB)")  # fmt: skip
        report(engine, videos, work, args.rounds)
        if args.full_engine:
            full_model_costs(args.full_engine, work)


def tiny_engine(folder: Path) -> Path:
    from heke_export.onnx_export import onnx_from_weights
    from heke_ref.checkpoint import demo_weights

    return onnx_from_weights(demo_weights("r2p1d_HEKE_4", tiny=True), folder / "engine")


def best(configs: list[Config]) -> tuple[float, float]:
    """The least wall and CPU per extra video over repeated rounds: on a shared machine,
    other work only ever adds time, so the minimum is the cost itself."""
    return min(c.marginal()[0] for c in configs), min(c.marginal()[1] for c in configs)


def report(engine: Path, videos: list[Path], work: Path, rounds: int) -> None:
    sets = [videos[: len(videos) // 5], videos]
    want: dict = {}
    alone: list[Config] = []
    one: list[Config] = []
    for _ in range(rounds):  # interleaved, so a burst of other work hits both alike
        with pinned({0}):
            alone.append(scorer_config(engine, sets, 1, "Scorer, 1 core (1 thread)", want))
        got: dict = {}
        one.append(ray_config(engine, sets, 1, work, got))
        check("Ray, 1 worker", got, want)
        print(alone[-1].line(), one[-1].line(), sep="\n", flush=True)
    got = {}
    both = scorer_config(engine, sets, 2, "Scorer, 2 cores (2 threads)", got)
    check("Scorer, 2 threads", got, want)
    got = {}
    two = ray_config(engine, sets, 2, work, got)
    check("Ray, 2 workers", got, want)
    print(both.line(), two.line(), sep="\n")
    (base_wall, base_cpu), (wall, cpu) = best(alone), best(one)
    verdict = "PASSED" if wall / base_wall - 1 <= TARGET_OVERHEAD else "FAILED"
    print(
        f"{verdict} | Ray overhead on one core, per video (best of {rounds}): "
        f"wall {wall / base_wall - 1:+.1%} ({base_wall:.3f} -> {wall:.3f} s), "
        f"CPU {cpu / base_cpu - 1:+.1%} ({base_cpu:.3f} -> {cpu:.3f} s) (target <= +15%)"
    )
    end_to_end = min(c.large.wall_s for c in one) / min(c.large.wall_s for c in alone) - 1
    print(f"end to end on {len(videos)} videos (fixed costs included): {end_to_end:+.1%}")
    print(
        f"1 -> 2 cores, videos/s per extra video: Scorer x{best(alone)[0] / both.marginal()[0]:.2f}"
        f" (2 ONNX Runtime threads), Ray x{wall / two.marginal()[0]:.2f} (2 workers)"
    )


if __name__ == "__main__":
    main()
