"""Pipelined scoring: decoding workers -> bounded queue -> batcher -> backend -> results.

Threads, because PyAV/FFmpeg and NumPy release the GIL while decoding and pooling, and ONNX
Runtime, torch and TensorRT while computing:

- ``workers`` decoder threads take inputs in order and turn each into model inputs
  (``decode``); a file that fails becomes an error result at once, never a stall.
- One inference thread groups snippets of equal shape (same H x W), across videos, into
  batches of at most ``batch_size``, runs them (``run_batches``: a backend's ``infer_many``
  when it has one, so it can overlap copies of neighbouring batches) and finishes each video
  (``finish``) when its last snippet is back. It never waits for a batch to fill: when no
  decoded video is queued it runs what it has, so the backend idles only when decoding is
  behind.
- The caller's thread gets the results in input order.

Memory is bounded whatever the number or length of the inputs: decoded videos wait in a queue
of ``queue_size`` (a decoder blocks while it is full), so at most ``workers + queue_size`` plus
the batcher's share (under ``3 * batch_size + 1``) decoded videos are alive; finished results
wait for their turn in a window of ``window`` inputs, beyond which decoders take no new input.
A slow file therefore holds back its successors' *results* (the order is stable) but not their
decoding or inference, until the window is full.

A file whose decoding never ends would then stall the run, so ``timeout_s`` bounds each
``decode``: past it the input becomes an error result (``fail``), its window slot is freed and a
new decoder thread takes the abandoned one's place. Python cannot kill a thread: the abandoned
one is a daemon that may keep a core busy until FFmpeg returns, and what it returns is dropped.
At most ``workers`` abandoned threads still running are replaced; beyond that a decoder that
times out is not (decoding goes on with fewer threads), and once none is left the remaining
inputs fail unread rather than pile up hung threads. The caller's thread checks the clock
while it waits for results.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from heke_runtime.errors import HekeError

Arrays = dict[str, np.ndarray]
Source = str | Path
R = TypeVar("R")
T = TypeVar("T")
POLL_S = 0.05  # how often blocked threads look at the stop flag


class Decoded(Protocol):
    """What ``decode`` returns: model inputs whose first axis counts the video's snippets."""

    @property
    def inputs(self) -> Mapping[str, np.ndarray]: ...


class DecodeTimeoutError(HekeError, TimeoutError):
    """An input's decoding ran past ``PipelineOptions.timeout_s``; it was skipped."""


D = TypeVar("D", bound=Decoded)


ABANDONED = "heke-abandoned"  # the name of a thread call_with_timeout gave up on


def timeout_reason(seconds: float) -> str:
    """The error text of an input whose decoding ran past ``seconds`` (heke-run's and
    heke-corpus's records say the same)."""
    return f"decoding took longer than {seconds:g} s (--timeout); skipped"


def call_with_timeout(fn: Callable[[], T], seconds: float, reason: str) -> T:
    """``fn()``, run in a daemon thread and waited for at most ``seconds``; its exception
    propagates. Past the limit :class:`DecodeTimeoutError` (``reason``) is raised and the
    thread is abandoned: Python cannot stop it, so it runs on (maybe keeping a core busy)
    until ``fn`` returns, and what it returns is dropped. :func:`abandoned_calls` counts those
    still running, for callers that must bound them."""
    box: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # handed to the caller's thread below
            box.append((False, exc))

    thread = threading.Thread(target=target, name="heke-timed-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if not box:
        thread.name = ABANDONED
        raise DecodeTimeoutError(reason)
    done, value = box[0]
    if not done:
        raise value
    return value


def abandoned_calls() -> int:
    """Threads of this process that :func:`call_with_timeout` gave up on and still run."""
    return sum(thread.name == ABANDONED for thread in threading.enumerate())


def default_workers() -> int:
    """The cores this process may use (the CPU affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return max(os.cpu_count() or 1, 1)


@dataclass(frozen=True)
class PipelineOptions:
    """``queue_size`` decoded videos wait for the batcher; ``window`` inputs may be taken and
    not yet returned; ``timeout_s`` bounds one input's ``decode`` (None: no limit). Defaults:
    as many workers as cores, a queue of ``max(2, workers)``."""

    workers: int = 0  # 0: default_workers()
    batch_size: int = 4
    queue_size: int = 0  # 0: max(2, workers)
    window: int = 0  # 0: max(64, 4 * (workers + queue_size))
    timeout_s: float | None = None

    def resolved(self) -> PipelineOptions:
        workers = self.workers or default_workers()
        size = self.queue_size or max(2, workers)
        window = self.window or max(64, 4 * (workers + size))
        for name, value in (("workers", workers), ("batch_size", self.batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be more than 0 (or None), got {self.timeout_s}")
        return PipelineOptions(workers, self.batch_size, size, window, self.timeout_s)


@dataclass
class PipelineStats:
    """What a run did; ``peak_decoded`` is the most decoded videos alive at once."""

    inputs: int = 0
    failed_decode: int = 0
    timed_out: int = 0  # decodes given up on (not counted in failed_decode)
    batches: int = 0
    snippets: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    peak_decoded: int = 0
    peak_queued: int = 0
    decoded_alive: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def alive(self, change: int) -> None:
        with self.lock:
            self.decoded_alive += change
            self.peak_decoded = max(self.peak_decoded, self.decoded_alive)


# --------------------------------------------------------------------------- warnings


class _WarningRouter:
    """Thread-safe warning capture: ``warnings.catch_warnings`` swaps process-wide state and
    is unsafe across threads. While any capture is active, every warning goes through here
    and lands in the capturing thread's list; other threads' warnings pass through."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local = threading.local()
        self.active = 0
        self.saved: warnings.catch_warnings[None] | None = None  # restores filters and hook
        self.passthrough: Callable[..., None] = warnings.showwarning

    def show(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        sink = getattr(self.local, "sink", None)
        if sink is not None:
            sink.append(str(message))
        else:
            self.passthrough(message, category, filename, lineno, file, line)

    @contextmanager
    def capture(self) -> Iterator[list[str]]:
        sink: list[str] = []
        with self.lock:
            if self.active == 0:
                self.passthrough = warnings.showwarning
                self.saved = warnings.catch_warnings()
                self.saved.__enter__()
                # "always": the once-per-location registry would hide the next video's warning.
                warnings.simplefilter("always")
                warnings.showwarning = self.show
            elif warnings.showwarning is not self.show:
                # Swapped while a capture was active (a decode abandoned past --timeout still
                # holds one, and the caller's code, e.g. a test harness, set its own hook):
                # route again, passing other threads' warnings to the new hook.
                self.passthrough = warnings.showwarning
                warnings.showwarning = self.show
            self.active += 1
        outer, self.local.sink = getattr(self.local, "sink", None), sink
        try:
            yield sink
        finally:
            self.local.sink = outer
            with self.lock:
                self.active -= 1
                if self.active == 0 and self.saved is not None:
                    self.saved.__exit__(None, None, None)
                    self.saved = None


_ROUTER = _WarningRouter()


def captured_warnings() -> Any:
    """``with captured_warnings() as messages:`` collects this thread's warning texts."""
    return _ROUTER.capture()


# --------------------------------------------------------------------------- batching


@dataclass
class _Video(Generic[D]):
    seq: int
    source: Source
    decoded: D
    started: float
    count: int
    parts: list[tuple[int, Arrays]] = field(default_factory=list)
    missing: int = 0
    error: BaseException | None = None


@dataclass(frozen=True)
class _Chunk(Generic[D]):
    video: _Video[D]
    first: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.first


def shape_key(inputs: Mapping[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Videos batch together when every input has the same per-snippet shape."""
    return tuple((name, tuple(inputs[name].shape[1:])) for name in sorted(inputs))


_DONE = object()


class Batcher(Generic[D]):
    """Groups queued videos' snippets by shape into batches of at most ``batch_size``."""

    def __init__(self, source: queue.Queue[Any], batch_size: int, stop: threading.Event) -> None:
        self.source, self.batch_size, self.stop = source, batch_size, stop
        self.pending: dict[Any, deque[_Chunk[D]]] = {}
        self.counts: dict[Any, int] = {}
        self.done = False
        self.in_flight: deque[list[_Chunk[D]]] = deque()

    def batches(self) -> Iterator[Arrays]:
        """Batches until the source is exhausted; each one's chunks go to ``in_flight``."""
        while True:
            chunks = self.next_chunks()
            if chunks is None:
                return
            self.in_flight.append(chunks)
            names = chunks[0].video.decoded.inputs
            yield {
                name: np.concatenate(
                    [c.video.decoded.inputs[name][c.first : c.stop] for c in chunks]
                )
                for name in names
            }

    def next_chunks(self) -> list[_Chunk[D]] | None:
        while True:
            full = next((k for k, n in self.counts.items() if n >= self.batch_size), None)
            if full is not None:
                return self.take(full)
            if self.done or self.stop.is_set():
                return self.take(self.largest()) if self.counts else None
            item = self.receive(wait=not self.counts)
            if item is None:  # nothing queued: run what we have rather than wait
                return self.take(self.largest())
            if item is _DONE:
                self.done = True
            else:
                self.add(item)

    def receive(self, *, wait: bool) -> Any:
        while True:
            try:
                return self.source.get(timeout=POLL_S) if wait else self.source.get_nowait()
            except queue.Empty:
                if not wait or self.stop.is_set():
                    return _DONE if self.stop.is_set() else None

    def add(self, video: _Video[D]) -> None:
        key = shape_key(video.decoded.inputs)
        self.pending.setdefault(key, deque()).append(_Chunk(video, 0, video.count))
        self.counts[key] = self.counts.get(key, 0) + video.count

    def largest(self) -> Any:
        return max(self.counts, key=lambda k: self.counts[k])

    def take(self, key: Any) -> list[_Chunk[D]]:
        """Up to ``batch_size`` snippets of shape ``key``, oldest videos first."""
        chunks, room, waiting = [], self.batch_size, self.pending[key]
        while room and waiting:
            chunk = waiting.popleft()
            if chunk.size > room:  # split: the rest stays first in line
                waiting.appendleft(_Chunk(chunk.video, chunk.first + room, chunk.stop))
                chunk = _Chunk(chunk.video, chunk.first, chunk.first + room)
            chunks.append(chunk)
            room -= chunk.size
        self.counts[key] -= self.batch_size - room
        if not waiting:
            del self.pending[key], self.counts[key]
        return chunks


# --------------------------------------------------------------------------- pipeline


def run_batches_with(backend: Any) -> Callable[[Iterable[Arrays]], Iterator[dict[str, np.ndarray]]]:
    """The backend's ``infer_many`` (overlapped batches) when it has one, else ``infer``."""
    many = getattr(backend, "infer_many", None)
    if many is not None:
        return many
    return lambda batches: (backend.infer(b) for b in batches)


class Pipeline(Generic[D, R]):
    """Runs ``decode`` -> batches -> ``run_batches`` -> ``finish`` over many inputs.

    ``fail(source, exc, started)`` turns an exception (decoding, inference or ``finish``)
    into a result; results come back in input order from :meth:`run`.
    """

    def __init__(
        self,
        decode: Callable[[Source], D],
        run_batches: Callable[[Iterable[Arrays]], Iterator[Mapping[str, np.ndarray]]],
        finish: Callable[[D, Arrays, float], R],
        fail: Callable[[Source, BaseException, float], R],
        options: PipelineOptions | None = None,
    ) -> None:
        self.decode, self.run_batches, self.finish, self.fail = decode, run_batches, finish, fail
        self.options = (options or PipelineOptions()).resolved()
        self.stats = PipelineStats()

    def run(self, sources: Iterable[Source]) -> Iterator[R]:
        """Results in the order of ``sources`` (taken lazily), each as soon as it is its turn."""
        run = _Run(self, iter(sources))
        try:
            yield from run.results()
        finally:
            run.shutdown()


class _Run(Generic[D, R]):
    """The state of one :meth:`Pipeline.run`: its threads, queues and reorder buffer."""

    def __init__(self, pipeline: Pipeline[D, R], sources: Iterator[Source]) -> None:
        options = pipeline.options
        self.p, self.sources, self.stats = pipeline, sources, pipeline.stats
        self.stop = threading.Event()
        self.decoded: queue.Queue[Any] = queue.Queue(maxsize=options.queue_size)
        self.finished: queue.Queue[tuple[int, Any]] = queue.Queue()
        self.window = threading.Semaphore(options.window)
        self.lock = threading.Lock()
        self.next_seq = 0
        self.live_decoders = options.workers
        # seq -> (source, start, thread) of each decode under way, for the timeout
        self.decoding: dict[int, tuple[Source, float, threading.Thread]] = {}
        self.abandoned = 0  # threads given up on and still inside ``decode``
        self.draining = False  # no decoder left to replace a hung one: fail the rest unread
        self.batcher: Batcher[D] = Batcher(self.decoded, options.batch_size, self.stop)
        self.threads: list[threading.Thread] = []
        self.start_thread(self.infer_loop, "heke-infer")
        for _ in range(options.workers):
            self.start_thread(self.decode_loop, "heke-decode")

    def start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=f"{name}-{len(self.threads)}", daemon=True)
        self.threads.append(thread)
        thread.start()

    # ---------------------------------------------------------------- caller side

    def results(self) -> Iterator[R]:
        ready: dict[int, R] = {}
        emitted, finished = 0, False
        limit = self.p.options.timeout_s
        while not finished or emitted < self.next_seq:
            if limit is not None:
                self.expire(limit)
            try:
                seq, item = self.finished.get(timeout=None if limit is None else POLL_S)
            except queue.Empty:
                continue
            if seq < 0:  # the end, or a fatal error of the pipeline itself
                if isinstance(item, BaseException):
                    raise item
                finished = True
                continue
            ready[seq] = item
            while emitted in ready:
                result = ready.pop(emitted)
                emitted += 1
                self.window.release()
                yield result

    def shutdown(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=POLL_S * 4)  # a decoder inside a slow file is left (daemon)

    def expire(self, limit: float) -> None:
        """Gives up on decodes running longer than ``limit`` seconds: each fails, and its
        thread is replaced while few are abandoned (the module docstring)."""
        now = time.perf_counter()
        with self.lock:
            late = [seq for seq, (_, started, _) in self.decoding.items() if now - started > limit]
            given_up = [(seq, *self.decoding.pop(seq), self.abandon()) for seq in late]
        reason = timeout_reason(limit)
        for seq, source, started, thread, replace in given_up:
            self.threads.remove(thread)  # shutdown need not wait for it
            with self.stats.lock:
                self.stats.timed_out += 1
            self.finished.put((seq, self.p.fail(source, DecodeTimeoutError(reason), started)))
            if replace:
                self.start_thread(self.decode_loop, "heke-decode")

    def abandon(self) -> bool:
        """Counts one more abandoned decoder (lock held); True when a new one takes its place."""
        self.abandoned += 1
        if self.abandoned <= self.p.options.workers:
            return True
        if self.live_decoders > 1:
            self.live_decoders -= 1  # the others decode on, one fewer
            return False
        self.draining = True  # it was the last: its replacement fails the rest unread
        return True

    # ---------------------------------------------------------------- decoding

    def take(self) -> tuple[int, Source] | None:
        with self.lock:
            try:
                source = next(self.sources)
            except StopIteration:
                return None
            seq, self.next_seq = self.next_seq, self.next_seq + 1
            self.stats.inputs += 1
            return seq, source

    def decode_loop(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.window.acquire(timeout=POLL_S):
                    continue
                taken = self.take()
                if taken is None:
                    self.window.release()
                    break
                if not self.decode_one(*taken):
                    return  # given up on: expire() has handed this thread's place on
        except BaseException as exc:  # the input iterable itself failed: end the run with it
            self.finished.put((-1, exc))
        with self.lock:
            self.live_decoders -= 1
            last = self.live_decoders == 0
        if last:
            self.put_decoded(_DONE)

    def decode_one(self, seq: int, source: Source) -> bool:
        """Decodes one input and passes it on; False when expire() gave up on it meanwhile."""
        started = time.perf_counter()
        if self.draining:
            reason = f"skipped unread: {self.abandoned} earlier files still decode past --timeout"
            self.finished.put((seq, self.p.fail(source, DecodeTimeoutError(reason), started)))
            return True
        with self.lock:
            self.decoding[seq] = (source, started, threading.current_thread())
        try:
            decoded = self.p.decode(source)
            count = int(next(iter(decoded.inputs.values())).shape[0])
        except Exception as exc:
            if not self.claim(seq):
                return False
            with self.stats.lock:
                self.stats.failed_decode += 1
            self.finished.put((seq, self.p.fail(source, exc, started)))
            return True
        if not self.claim(seq):
            return False  # its result went out already: never feed it to the backend
        self.stats.alive(+1)
        video = _Video(seq, source, decoded, started, count, missing=count)
        self.put_decoded(video)
        return True

    def claim(self, seq: int) -> bool:
        """True when this decode still owns its input (expire() did not give up on it)."""
        with self.lock:
            if self.decoding.pop(seq, None) is not None:
                return True
            self.abandoned -= 1
            return False

    def put_decoded(self, item: Any) -> None:
        while True:
            try:
                self.decoded.put(item, timeout=POLL_S)
            except queue.Full:
                if self.stop.is_set():
                    return
                continue
            with self.stats.lock:
                self.stats.peak_queued = max(self.stats.peak_queued, self.decoded.qsize())
            return

    # ---------------------------------------------------------------- inference

    def infer_loop(self) -> None:
        try:
            while not self.run_until_failure():
                pass
            self.finished.put((-1, None))
        except BaseException as exc:  # a bug in the pipeline: hand it to the caller
            self.finished.put((-1, exc))

    def run_until_failure(self) -> bool:
        """Drive the backend; True when every batch ran, False after failing the batches in
        flight (a backend error), so the caller starts the backend on the rest."""
        batcher = self.batcher
        try:
            for outputs in self.p.run_batches(batcher.batches()):
                self.deliver(batcher.in_flight.popleft(), dict(outputs))
        except Exception as exc:
            if not batcher.in_flight:
                raise  # the backend failed before taking a batch: no retry would help
            while batcher.in_flight:
                for chunk in batcher.in_flight.popleft():
                    self.fail_video(chunk.video, exc)
            return False
        return True

    def deliver(self, chunks: list[_Chunk[D]], outputs: Arrays) -> None:
        self.stats.batches += 1
        size = sum(c.size for c in chunks)
        self.stats.snippets += size
        self.stats.batch_sizes.append(size)
        offset = 0
        for chunk in chunks:
            part = {k: v[offset : offset + chunk.size] for k, v in outputs.items()}
            offset += chunk.size
            video = chunk.video
            video.parts.append((chunk.first, part))
            video.missing -= chunk.size
            if video.missing == 0:
                self.finish_video(video)

    def finish_video(self, video: _Video[D]) -> None:
        if video.error is not None:
            return  # already reported when one of its batches failed
        parts = [p for _, p in sorted(video.parts, key=lambda item: item[0])]
        outputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        try:
            result = self.p.finish(video.decoded, outputs, video.started)
        except Exception as exc:
            result = self.p.fail(video.source, exc, video.started)
        self.release(video, result)

    def fail_video(self, video: _Video[D], exc: BaseException) -> None:
        if video.error is None:
            video.error = exc
            self.release(video, self.p.fail(video.source, exc, video.started))

    def release(self, video: _Video[D], result: R) -> None:
        video.parts.clear()
        self.stats.alive(-1)
        self.finished.put((video.seq, result))
