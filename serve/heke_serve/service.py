"""The scoring service behind the HTTP routes: heke-run's Scorer steps, shared by requests.

A request's video takes heke-run's path (docs/ARCHITECTURE.md, "The trip of one video"):
``Scorer.decode`` in a bounded pool of decoding threads, the engine through the
:class:`~heke_serve.batching.DynamicBatcher` (snippets of concurrent requests share engine
calls), then ``Scorer.result``, so the record is the one heke-run writes for that file.

Backpressure: at most ``max_queue`` videos are admitted at once (uploading, decoding, waiting
for the engine or being scored); one more is refused with 429 and ``Retry-After`` instead of
being buffered, so memory is bounded by the settings, never by the load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heke_runtime.models import model_entry
from heke_runtime.pipeline import call_with_timeout, timeout_reason
from heke_runtime.scorer import DecodedVideo, Scorer, error_reason
from heke_serve.batching import DynamicBatcher
from heke_serve.metrics import Metrics
from heke_serve.uploads import RequestError

SNIPPET_CHOICES = (10, 12)  # the authors' two settings: in-the-wild files, raw/synthetic sets
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ServiceLimits:
    """What bounds the service's work and memory (``heke-serve --help`` names each)."""

    max_batch: int
    batch_delay_s: float = 0.005
    decode_workers: int = 2
    max_queue: int = 8
    timeout_s: float | None = 600.0


@dataclass(frozen=True)
class Scored:
    """A request's outcome: the HTTP status, the record (also for a failed video, as heke-run
    writes one) and, on failure, the one-line ``"<input>: <reason>"``."""

    status: int
    record: dict[str, Any]
    error: str | None = None


class ScoringService:
    """One engine, a decoding pool and a batcher; :meth:`start` loads and warms the engine."""

    def __init__(self, scorer: Scorer, limits: ServiceLimits, metrics: Metrics) -> None:
        self.scorer, self.limits, self.metrics = scorer, limits, metrics
        self.pool = ThreadPoolExecutor(limits.decode_workers, thread_name_prefix="heke-decode")
        self.batcher: DynamicBatcher | None = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.admitted = 0
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Loads the engine and runs one warm-up batch (``/readyz`` answers 200 after)."""
        try:
            self.scorer.open()
            entry = model_entry(self.scorer.model)
            warm = {name: np.zeros(entry.trace_inputs_shape(), np.float32) for name in entry.inputs}
            self.scorer.backend.infer(warm)
        except Exception as exc:
            self.load_error = error_reason(exc)
            raise
        self.batcher = self._new_batcher()
        self.ready.set()

    def _new_batcher(self) -> DynamicBatcher | None:
        """The batcher :meth:`infer` feeds (a Ray Serve replica batches with Ray's instead:
        :mod:`heke_serve.ray_serve`)."""
        return DynamicBatcher(
            self.scorer.backend.infer,
            self.limits.max_batch,
            self.limits.batch_delay_s,
            self.metrics.observe_batch,
        )

    def describe(self) -> dict[str, Any]:
        """What ``/readyz`` says about the engine once it is ready."""
        scorer = self.scorer
        return {
            "model": scorer.model,
            "engine": str(scorer.engine_path),
            "backend": scorer.backend_name,
            "device": scorer.device,
            "regressor": scorer.regressor.source if scorer.regressor else None,
            "max_batch": self.limits.max_batch,
            "max_queue": self.limits.max_queue,  # videos in progress before a 429
            "decode_workers": self.limits.decode_workers,
        }

    def close(self) -> None:
        self.ready.clear()
        if self.batcher is not None:
            self.batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.scorer.close()

    # ------------------------------------------------------------------ admission

    @contextmanager
    def admission(self) -> Iterator[None]:
        """One video's slot, or 429 when ``max_queue`` videos are in already."""
        if not self.ready.is_set():
            reason = self.load_error or "the engine is still loading"
            raise RequestError(503, reason, {"Retry-After": str(RETRY_AFTER_S)})
        with self.lock:
            if self.admitted >= self.limits.max_queue:
                raise RequestError(
                    429,
                    f"server busy: {self.admitted} videos in progress; retry later",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            self.admitted += 1
            self.metrics.queue_depth.set(self.admitted)
        try:
            yield
        finally:
            with self.lock:
                self.admitted -= 1
                self.metrics.queue_depth.set(self.admitted)

    # ------------------------------------------------------------------ scoring

    async def score(self, path: Path, name: str, num_snippets: int | None = None) -> Scored:
        """The record of the video at ``path``, named ``name`` (the client's name for it)."""
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            decoded = await loop.run_in_executor(self.pool, self._decode, path, num_snippets, name)
        except Exception as exc:
            self.metrics.decode_failures.inc()
            return self._failed(str(path), name, exc, start, 422)
        try:
            outputs = await self.infer(decoded.inputs)
            result = self.scorer.result(decoded, outputs, start)
        except Exception as exc:  # the engine's fault, not the input's
            return self._failed(str(path), name, exc, start, 500)
        self.metrics.videos_scored.inc()
        return Scored(200, result.to_dict())

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The engine's ``heads`` and ``features`` for every snippet of one video."""
        assert self.batcher is not None  # admission() let the request in: the engine is up
        return await asyncio.wrap_future(self.batcher.submit(inputs))

    def _decode(self, path: Path, num_snippets: int | None, name: str) -> DecodedVideo:
        """Records and warnings name the client's input, never the temporary file."""
        limit = self.limits.timeout_s
        if limit is None:
            return self.scorer.decode(path, num_snippets, name)
        return call_with_timeout(
            lambda: self.scorer.decode(path, num_snippets, name), limit, timeout_reason(limit)
        )

    def _failed(
        self, local: str, name: str, exc: BaseException, start: float, status: int
    ) -> Scored:
        """The error record heke-run would write for ``name`` (the reason names the client's
        input, never the temporary file)."""
        result = self.scorer.failure(local, exc, start)
        reason = (result.error or "").replace(local, name)
        result = dataclasses.replace(result, path=name, error=reason)
        return Scored(status, result.to_dict(), f"{name}: {reason}")


def check_snippets(value: int | None) -> int | None:
    if value is not None and value not in SNIPPET_CHOICES:
        raise RequestError(422, f"snippets must be 10 or 12, got {value}")
    return value
