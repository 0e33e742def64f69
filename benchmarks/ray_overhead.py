"""Ray's cost: ``heke-corpus`` on one CPU worker vs the single-machine ``Scorer``, then 1 vs 2
workers; and the per-video decode and model costs the README's cluster estimate uses.

Target (issue "corpus scale"): Ray with one CPU worker at most 15% slower than the Scorer on
the same corpus and the same core.

    python benchmarks/ray_overhead.py [--videos 30] [--size 640x360] [--frames 75]
                                      [--engine ENGINE.onnx] [--full-engine FULL.onnx]

The corpus is generated (tests/videos.py patterns, H.264) and scored with the tiny model
unless ``--engine`` names another: its preprocessing, hence the tensor each video sends
through Ray's object store (63 MiB at 640x360), is the full model's. Every configuration is
checked to give the Scorer's scores before its time counts.

"One CPU worker" means one core: the Scorer (one ONNX Runtime thread) runs pinned to core 0,
and so does the whole Ray cluster (head, driver, a one-CPU worker node holding one engine
actor and one decode task, each allotted half its CPU). Two workers add a second one-CPU
node pinned to core 1. Times exclude starting the cluster (reported apart) and include the
actors' start, the engine loads, the run's bookkeeping and the final compaction.
``--full-engine`` also times the full-size model on one 1080p clip (slow on a CPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TARGET_OVERHEAD = 0.15
TOLERANCE = 1e-6


def make_corpus(folder: Path, count: int, size: tuple[int, int], frames: int) -> list[Path]:
    from tests.videos import make_video

    options = {"preset": "ultrafast", "crf": "28"}
    return [
        make_video(folder / f"v{i:03d}.mp4", size=size, frames=frames + i % 7, options=options)
        for i in range(count)
    ]


@contextmanager
def pinned(cores: set[int]) -> Iterator[None]:
    """Run the block (and every process it starts) on ``cores`` only."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def scorer_run(engine: Path, videos: list[Path], threads: int) -> tuple[float, dict]:
    from heke_runtime.scorer import Scorer

    with Scorer(engine, backend="onnxruntime-cpu", threads=threads) as scorer:
        scorer.open()
        start = time.perf_counter()
        scores = {str(v): scorer.score(v).scores for v in videos}
        return time.perf_counter() - start, scores


def ray_run(engine: Path, videos: list[Path], workers: int, out: Path) -> tuple[float, float, dict]:
    """(cluster start, run, scores) on ``workers`` one-CPU nodes, node k pinned to core k."""
    import ray
    from ray.cluster_utils import Cluster

    from heke_runtime import corpus_store as store
    from heke_runtime.corpus import CorpusOptions, run_corpus

    start = time.perf_counter()
    with pinned({0}):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for core in range(workers):
            with pinned({core}):
                cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        with pinned({0}):
            ray.init(address=cluster.address, logging_level="ERROR")
            boot = time.perf_counter() - start
            options = CorpusOptions(
                actors=workers, actor_cpus=0.5, decode_cpus=0.5, flush_rows=10**6, overwrite=True
            )
            start = time.perf_counter()
            run_corpus([str(v) for v in videos], engine, out, options=options)
            took = time.perf_counter() - start
        scores = {r["path"]: r["scores"] for r in store.read_results(out)}
        return boot, took, scores
    finally:
        ray.shutdown()
        cluster.shutdown()


def check(label: str, got: dict, want: dict) -> None:
    assert got.keys() == want.keys(), f"{label}: not every video was scored"
    for path, scores in want.items():
        worst = max(abs(got[path][k] - v) for k, v in scores.items())
        assert worst <= TOLERANCE, f"{label}: {path} differs by {worst:g}"


def unit_costs(engine: Path, video: Path, repeats: int = 3) -> tuple[float, float, float]:
    """Median seconds on one core: decode + preprocess, model, and the tensor's MiB."""
    from heke_runtime.preprocess import load_clips
    from heke_runtime.scorer import Scorer, _named_inputs

    decode, model = [], []
    with pinned({0}), Scorer(engine, backend="onnxruntime-cpu", threads=1) as scorer:
        for _ in range(repeats):
            start = time.perf_counter()
            loaded, _, _ = load_clips(video, scorer.num_snippets, model=scorer.model)
            decode.append(time.perf_counter() - start)
            start = time.perf_counter()
            scorer._run(_named_inputs(scorer.model, loaded))
            model.append(time.perf_counter() - start)
    return statistics.median(decode), statistics.median(model), loaded.nbytes / 2**20


def full_model_costs(engine: Path, folder: Path) -> None:
    from tests.videos import make_video

    clip = make_video(
        folder / "clip1080.mp4", size=(1920, 1080), frames=250,
        options={"preset": "ultrafast", "crf": "28"},
    )  # fmt: skip
    decode, model, mib = unit_costs(engine, clip, repeats=1)
    print(
        f"full model, 1080p 10 s clip, one core: decode+preprocess {decode:.2f} s, "
        f"model {model:.1f} s, tensor {mib:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=30)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--frames", type=int, default=75)
    parser.add_argument("--engine", type=Path)
    parser.add_argument("--full-engine", type=Path)
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two cores (1 vs 2 workers)")
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="heke-ray-bench-") as tmp:
        work = Path(tmp)
        engine = args.engine or tiny_engine(work)
        videos = make_corpus(work, args.videos, (width, height), args.frames)
        decode, model, mib = unit_costs(engine, videos[0])
        print(f"{len(videos)} videos {args.size}, engine {engine.name}")
        print(f"per video, one core: decode+preprocess {decode:.3f} s, model {model:.3f} s, "
              f"tensor {mib:.0f} MiB")  # fmt: skip
        report(engine, videos, work)
        if args.full_engine:
            full_model_costs(args.full_engine, work)


def tiny_engine(folder: Path) -> Path:
    from heke_export.onnx_export import onnx_from_weights
    from heke_ref.checkpoint import demo_weights

    return onnx_from_weights(demo_weights("r2p1d_HEKE_4", tiny=True), folder / "engine")


def report(engine: Path, videos: list[Path], work: Path) -> None:
    with pinned({0}):
        alone, want = scorer_run(engine, videos, threads=1)
    both, got = scorer_run(engine, videos, threads=2)
    check("Scorer, 2 threads", got, want)
    rows = [("Scorer, 1 core (1 thread)", alone), ("Scorer, 2 cores (2 threads)", both)]
    ray_times = {}
    for workers in (1, 2):
        boot, took, got = ray_run(engine, videos, workers, work / f"out{workers}")
        check(f"Ray {workers} worker(s)", got, want)
        ray_times[workers] = took
        rows.append((f"Ray, {workers} one-CPU worker(s) (cluster start {boot:.1f} s)", took))
    for label, seconds in rows:
        print(f"{label:<52} {seconds:7.2f} s  {len(videos) / seconds:6.2f} videos/s")
    overhead = ray_times[1] / alone - 1
    verdict = "PASSED" if overhead <= TARGET_OVERHEAD else "FAILED"
    print(f"{verdict} | Ray overhead on one core: {overhead:+.1%} (target <= +15%)")
    print(f"Ray scaling 1 -> 2 workers: x{ray_times[1] / ray_times[2]:.2f} (2 cores here)")


if __name__ == "__main__":
    main()
