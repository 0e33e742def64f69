"""Batching across requests: the snippets of concurrent videos share engine calls.

heke-run's pipeline (:mod:`heke_runtime.pipeline`) batches across the videos of one run and
never waits, since its queue is full whenever decoding keeps up. A service sees videos arrive
one request at a time, so it works the way Triton's dynamic batcher does: a batch goes to the
engine when it holds ``max_batch`` snippets, or when its oldest snippet has waited
``max_delay_s``, whichever comes first. One thread owns the backend, so a backend needs no
locking of its own; each video's outputs come back on a :class:`concurrent.futures.Future`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from heke_runtime.pipeline import shape_key

Arrays = dict[str, np.ndarray]
RunBatch = Callable[[Arrays], Mapping[str, np.ndarray]]


class BatcherClosedError(RuntimeError):
    """The batcher stopped before this video's snippets ran."""


@dataclass
class _Video:
    inputs: Mapping[str, np.ndarray]
    count: int
    arrived: float
    future: Future[Arrays]
    taken: int = 0  # snippets handed to batches so far
    parts: dict[int, Arrays] = field(default_factory=dict)  # first snippet -> outputs
    done: int = 0


@dataclass(frozen=True)
class _Chunk:
    video: _Video
    first: int
    stop: int


class DynamicBatcher:
    """Runs ``run_batch`` on batches of up to ``max_batch`` snippets taken from the videos
    submitted so far, oldest first, grouped by input shape (only equal shapes stack).

    ``on_batch(snippets, videos)`` is told the size of each batch and how many videos shared
    it (the service's metrics). A failing ``run_batch`` fails the videos of that batch only.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch: int,
        max_delay_s: float,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.run_batch, self.max_batch, self.max_delay_s = run_batch, max_batch, max_delay_s
        self.on_batch = on_batch or (lambda snippets, videos: None)
        self.waiting: dict[object, deque[_Video]] = {}
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="heke-serve-batcher", daemon=True)
        self.thread.start()

    def submit(self, inputs: Mapping[str, np.ndarray]) -> Future[Arrays]:
        """The future of ``{"heads", "features"}`` for every snippet of ``inputs``."""
        future: Future[Arrays] = Future()
        count = int(next(iter(inputs.values())).shape[0])
        video = _Video(inputs, count, time.monotonic(), future)
        with self.cond:
            if self.closed:
                raise BatcherClosedError("the service is shutting down")
            self.waiting.setdefault(shape_key(inputs), deque()).append(video)
            self.cond.notify()
        return future

    def close(self) -> None:
        """Stops taking videos; those not yet run fail with :class:`BatcherClosedError`."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(timeout=5)
        for videos in self.waiting.values():
            for video in videos:
                _fail(video, BatcherClosedError("the service stopped before this video ran"))
        self.waiting.clear()

    # ------------------------------------------------------------------ the batcher thread

    def _loop(self) -> None:
        while True:
            chunks = self._next_batch()
            if chunks is None:
                return
            self._run(chunks)

    def _next_batch(self) -> list[_Chunk] | None:
        """The next batch's chunks, once it is full or its oldest snippet waited long enough;
        None once closed."""
        with self.cond:
            while True:
                if self.closed:
                    return None
                key, ready_at = self._most_urgent()
                if key is not None and ready_at <= time.monotonic():
                    return self._take(key)
                self.cond.wait(None if key is None else ready_at - time.monotonic())

    def _most_urgent(self) -> tuple[object | None, float]:
        """The shape whose batch may go first, and from when (lock held)."""
        best: tuple[object | None, float] = (None, float("inf"))
        for key, videos in self.waiting.items():
            pending = sum(v.count - v.taken for v in videos)
            ready_at = 0.0 if pending >= self.max_batch else videos[0].arrived + self.max_delay_s
            if ready_at < best[1]:
                best = (key, ready_at)
        return best

    def _take(self, key: object) -> list[_Chunk]:
        """Up to ``max_batch`` snippets of shape ``key``, oldest video first (lock held)."""
        videos, room, chunks = self.waiting[key], self.max_batch, []
        while room and videos:
            video = videos[0]
            stop = min(video.count, video.taken + room)
            chunks.append(_Chunk(video, video.taken, stop))
            room -= stop - video.taken
            video.taken = stop
            if video.taken == video.count:
                videos.popleft()
        if not videos:
            del self.waiting[key]
        return chunks

    def _run(self, chunks: list[_Chunk]) -> None:
        names = list(chunks[0].video.inputs)
        batch = {
            n: np.concatenate([c.video.inputs[n][c.first : c.stop] for c in chunks]) for n in names
        }
        size = sum(c.stop - c.first for c in chunks)
        self.on_batch(size, len({id(c.video) for c in chunks}))
        try:
            outputs = self.run_batch(batch)
        except Exception as exc:  # this batch's videos fail; the service goes on
            for chunk in chunks:
                _fail(chunk.video, exc)
            return
        offset = 0
        for chunk in chunks:
            width = chunk.stop - chunk.first
            _deliver(chunk, {k: np.asarray(v[offset : offset + width]) for k, v in outputs.items()})
            offset += width


def _deliver(chunk: _Chunk, part: Arrays) -> None:
    video = chunk.video
    if video.future.done():  # failed already: one of its batches raised
        return
    video.parts[chunk.first] = part
    video.done += chunk.stop - chunk.first
    if video.done == video.count:
        parts = [video.parts[first] for first in sorted(video.parts)]
        video.future.set_result({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def _fail(video: _Video, exc: BaseException) -> None:
    if not video.future.done():
        video.future.set_exception(exc)
