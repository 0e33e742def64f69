"""End-to-end scoring in a fresh child process (its own peak RSS), the same clips through the
model alone in the same process right after, and decoding alone with every core."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from heke_bench.inputs import REPO, BenchError


def run_child(config: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`child` in a new interpreter and return what it measured."""
    done = subprocess.run(
        [sys.executable, "-m", "heke_bench.endtoend", json.dumps(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BenchError("end-to-end child failed: " + " | ".join(tail))
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def child(config: dict[str, Any]) -> dict[str, Any]:
    """Score the videos with the pipeline, then run their clips through the model alone."""
    from heke_runtime.scorer import Scorer

    videos = [Path(v) for v in config["videos"]]
    with Scorer(
        config["engine"],
        backend=config["backend"],
        backend_options=config["options"],
        batch_size=config["batch"],
        workers=config["workers"],
        keep_arrays=True,
    ) as scorer:
        warm = scorer.decode(videos[0]).inputs  # load and warm the engine outside the timing
        scorer.backend.infer({k: v[: config["batch"]] for k, v in warm.items()})
        start = time.perf_counter()
        results = list(scorer.score_many(videos))
        e2e_s = time.perf_counter() - start
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        failed = [r.error for r in results if not r.ok]
        if failed:
            raise BenchError(f"end-to-end scoring failed: {failed[0]}")
        model_s, worst = model_only(scorer, videos, results, config["batch"])
        stats = scorer.last_stats
    clips = sum(len(r.snippets) for r in results)
    return {
        "videos": len(videos),
        "clips": clips,
        "workers": config["workers"],
        "batch": config["batch"],
        "e2e_s": e2e_s,
        "videos_per_s": len(videos) / e2e_s,
        "model_only_s": model_s,
        "e2e_over_model": e2e_s / model_s,
        "peak_rss_mb": rss_mb,
        "max_abs_vs_model_only": worst,
        "mean_batch": float(np.mean(stats.batch_sizes)) if stats and stats.batch_sizes else None,
    }


def model_only(
    scorer: Any, videos: list[Path], results: list[Any], batch: int
) -> tuple[float, float]:
    """Seconds to run the same decoded clips through the backend alone, ``batch`` at a time,
    and how far its heads are from the pipeline's (a check that both ran the same clips)."""
    inputs = [scorer.decode(v).inputs for v in videos]  # decoded before the clock starts
    start = time.perf_counter()
    heads = [scorer.infer(x)["heads"] for x in inputs]
    elapsed = time.perf_counter() - start
    worst = max(float(np.abs(h - r.heads).max()) for h, r in zip(heads, results))
    if worst > 1e-3:
        raise BenchError(f"pipeline and model-only heads differ by {worst:.3g}")
    return elapsed, worst


def decode_only(videos: list[Path], model: str, workers: int, snippets: int = 12) -> dict[str, Any]:
    """Videos/s of decoding + preprocessing alone through the pipeline (no model)."""
    from heke_runtime.pipeline import Pipeline, PipelineOptions
    from heke_runtime.preprocess import load_clips

    def decode(path: Any) -> Any:
        clips, _, _ = load_clips(path, snippets, model=model)
        return type("Decoded", (), {"inputs": {"clips": clips}})()

    def nothing(batches: Any) -> Any:
        return ({"heads": np.zeros((len(b["clips"]), 4), np.float32)} for b in batches)

    options = PipelineOptions(workers=workers, batch_size=snippets)
    run = Pipeline(decode, nothing, lambda d, o, s: True, lambda p, e, s: e, options)
    start = time.perf_counter()
    results = list(run.run(videos))
    elapsed = time.perf_counter() - start
    if not all(r is True for r in results):
        raise BenchError(f"decode-only run failed: {next(r for r in results if r is not True)}")
    return {
        "videos": len(videos),
        "workers": workers,
        "s": elapsed,
        "videos_per_s": len(videos) / elapsed,
    }


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
