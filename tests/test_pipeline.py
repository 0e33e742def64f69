"""The pipelined runtime: the same results as the sequential path, in input order, with bounded
memory, and no stall or loss from a slow, broken or unlucky file.

Each behaviour is shown on fakes (a few lines of decode and backend, every step visible) and
again on the real parts: PyAV decoding tiny videos, the tiny r2p1d engine in ONNX Runtime.
Nothing here is timed: a slow file is one whose decode waits for an event the test sets,
inference is held back by an event, and every wait gives up after WAIT_S, which only a broken
pipeline reaches, so a hang fails the test instead of passing it or stalling the run.
"""

from __future__ import annotations

import shutil
import threading
import time
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from heke_runtime.backends.onnxruntime import OnnxRuntimeBackend
from heke_runtime.cli import main
from heke_runtime.pipeline import (
    DecodeTimeoutError,
    Pipeline,
    PipelineOptions,
    abandoned_calls,
    call_with_timeout,
    captured_warnings,
    run_batches_with,
    shape_key,
)
from heke_runtime.results import read_records
from heke_runtime.sampling import ShortVideoWarning
from heke_runtime.scorer import Scorer, ScorerError
from tests.test_backends import tiny_engine
from tests.videos import make_video, truncate_file

WAIT_S = 60.0  # the longest any wait here lasts: reached only when the pipeline broke

# A deadlock no event wait bounds (the caller waiting on results that never come) fails here.
pytestmark = pytest.mark.timeout(4 * WAIT_S)


# --------------------------------------------------------------------------- events


class Tally:
    """Wraps pipeline steps to note each call's first argument once it returns; ``reached``
    is set by the ``target``-th call, from whichever thread made it."""

    def __init__(self, target: int | None = None) -> None:
        self.target = target
        self.seen: list[Any] = []
        self.lock, self.reached = threading.Lock(), threading.Event()

    def wrap(self, step):
        def counted(*args):
            result = step(*args)
            with self.lock:
                self.seen.append(args[0])
                if len(self.seen) == self.target:
                    self.reached.set()
            return result

        return counted


def holding(decode, held, gate, answers):
    """``decode``, except that input ``held`` first waits for ``gate``; the wait's answer goes
    to ``answers`` (False: the gate never opened)."""

    def decode_held(source):
        if str(source) == str(held):
            answers.append(gate.wait(WAIT_S))
        return decode(source)

    return decode_held


class HeldBack:
    """A backend whose first batch waits for ``gate`` (``opened``: the wait's answer), so
    decoding runs as far ahead of inference as the pipeline lets it; notes each batch's
    snippet shape."""

    def __init__(self, backend, gate) -> None:
        self.backend, self.gate = backend, gate
        self.opened: list[bool] = []
        self.shapes: list[tuple] = []

    def infer(self, inputs):
        if not self.opened:
            self.opened.append(self.gate.wait(WAIT_S))
        self.shapes.append(shape_key(inputs))
        return self.backend.infer(inputs)


def wait_for(condition, seconds=WAIT_S):
    deadline = time.perf_counter() + seconds
    while not condition() and time.perf_counter() < deadline:
        time.sleep(0.01)
    return condition()


def ended(threads):
    """True once every thread of ``threads`` has ended (each waited for at most WAIT_S)."""
    for thread in threads:
        thread.join(WAIT_S)
    return not any(thread.is_alive() for thread in threads)


# --------------------------------------------------------------------------- with real videos


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Videos of two frame sizes, a broken file in the middle, and a short one (warning)."""
    folder = tmp_path_factory.mktemp("mixed")
    paths = [
        make_video(folder / f"v{i}.mp4", frames=30 + 7 * i, size=(64, 48) if i % 2 else (48, 32))
        for i in range(6)
    ]
    broken = folder / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    paths.insert(3, broken)
    paths.insert(5, make_video(folder / "short.mp4", frames=10))
    return paths


def scored(mixed, **options):
    with Scorer(tiny_engine("r2p1d_HEKE_4"), keep_arrays=True, **options) as scorer:
        return list(scorer.score_many(mixed)), scorer.last_stats


def test_pipeline_gives_exactly_the_sequential_results_in_order(mixed):
    # Batches of one snippet run the very same computation on both paths: bit-exact.
    sequential, _ = scored(mixed, workers=0, batch_size=1)
    pipelined, stats = scored(mixed, workers=3, batch_size=1)
    assert [r.path for r in pipelined] == [str(p) for p in mixed]
    assert [r.status for r in pipelined].count("error") == 1 and not pipelined[3].ok
    for one, other in zip(sequential, pipelined):
        assert (one.status, one.error, one.warnings) == (other.status, other.error, other.warnings)
        if one.ok:
            assert one.scores == other.scores and one.snippets == other.snippets
            np.testing.assert_array_equal(one.heads, other.heads)
            np.testing.assert_array_equal(one.features, other.features)
    assert any("fewer than" in w for w in pipelined[5].warnings)  # captured per thread
    assert stats is not None and stats.failed_decode == 1 and stats.decoded_alive == 0


def test_batches_across_videos_change_only_the_summation_order(mixed):
    """ONNX Runtime's reductions split work by batch size, so snippets batched with other
    videos' differ from the sequential path in the last float32 bits only."""
    sequential, _ = scored(mixed, workers=0, batch_size=5)
    pipelined, stats = scored(mixed, workers=2, batch_size=5)
    for one, other in zip(sequential, pipelined):
        if one.ok:
            np.testing.assert_allclose(other.heads, one.heads, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(other.features, one.features, rtol=1e-5, atol=1e-6)
    assert stats is not None and max(stats.batch_sizes) == 5 and stats.snippets == 12 * 7


def test_heke_run_workers_option_gives_the_same_records(tmp_path, mixed, capsys):
    engine = str(tiny_engine("r2p1d_HEKE_4"))
    records = {}
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}.jsonl"
        code = main([*map(str, mixed), "-e", engine, "-o", str(out), "--workers", workers])
        assert code == 1  # the broken file
        records[workers] = [
            {k: r[k] for k in ("path", "status", "scores")} for r in read_records(out)
        ]
    capsys.readouterr()
    assert records["0"] == records["2"] and len(records["0"]) == len(mixed)


# --------------------------------------------------------------------------- with fakes


@dataclass(frozen=True)
class Fake:
    """A decoded "video": ``count`` snippets of one shape, values = the video number."""

    number: int
    inputs: dict[str, np.ndarray]


def fake_decode(sizes=None, broken=()):
    def decode(source):
        number = int(source)
        if number in broken:
            raise ValueError(f"video {number} is broken")
        width = (sizes or {}).get(number, 8)
        clips = np.full((3, 2, width), number, dtype=np.float32)
        return Fake(number, {"clips": clips})

    return decode


class FakeBackend:
    def __init__(self, fail_on=None):
        self.fail_on = fail_on
        self.calls, self.lock = [], threading.Lock()

    def infer(self, inputs):
        clips = inputs["clips"]
        with self.lock:
            self.calls.append(sorted(set(clips[:, 0, 0].astype(int).tolist())))
        if self.fail_on is not None and self.fail_on in clips[:, 0, 0]:
            raise RuntimeError("the engine broke on this batch")
        return {"heads": clips[:, 0, :1] * 2.0}


def finish(decoded, outputs, started):
    heads = outputs["heads"]
    assert heads.shape[0] == 3 and np.all(heads == 2 * decoded.number)  # its own rows, in order
    return ("ok", decoded.number)


def fail(source, exc, started):
    return ("error", int(source), str(exc))


def pipeline(decode, backend, done=finish, **options):
    return Pipeline(decode, run_batches_with(backend), done, fail, PipelineOptions(**options))


def test_order_is_stable_and_a_slow_file_does_not_stall_the_others():
    backend, finished = FakeBackend(), Tally(29)
    waited: list[bool] = []
    decode = holding(fake_decode(), "2", finished.reached, waited)
    run = pipeline(decode, backend, finished.wrap(finish), workers=3, batch_size=3)
    results = list(run.run(str(i) for i in range(30)))
    assert results == [("ok", i) for i in range(30)]
    # Video 2's decode began only once the 29 others were decoded, inferred and finished.
    assert waited == [True] and backend.calls[-1] == [2]
    assert sum(2 in call for call in backend.calls) == 1


def test_broken_files_and_a_failing_batch_fail_alone():
    backend = FakeBackend(fail_on=7)
    run = pipeline(fake_decode(broken={3, 4}), backend, workers=2, batch_size=3)
    results = list(run.run(str(i) for i in range(12)))
    assert [r[0] for r in results].count("ok") == 9
    assert results[3] == ("error", 3, "video 3 is broken") and results[4][0] == "error"
    assert results[7] == ("error", 7, "the engine broke on this batch")  # batch of one video


def test_snippets_of_equal_shape_are_batched_across_videos():
    sizes = {i: 8 if i % 2 else 16 for i in range(10)}
    decoded = Tally(10)
    backend = HeldBack(FakeBackend(), decoded.reached)  # all decoded before the first batch
    decode = decoded.wrap(fake_decode(sizes=sizes))
    run = pipeline(decode, backend, workers=2, batch_size=5, queue_size=10)
    assert [r[1] for r in run.run(str(i) for i in range(10))] == list(range(10))
    assert backend.opened == [True]
    assert run.stats.snippets == 30 and max(run.stats.batch_sizes) == 5
    calls = backend.backend.calls
    assert any(len(call) > 1 for call in calls)  # one batch, several videos
    assert all(len({sizes[v] for v in call}) == 1 for call in calls)  # never mixed


def test_memory_stays_bounded_when_inference_is_the_bottleneck():
    workers, queue_size, batch_size = 3, 2, 3
    # The first batch (the first video's 3 snippets) waits until decoding can go no further:
    # that video in the batcher, a full queue and one finished video in each decoder.
    decoded = Tally(1 + queue_size + workers)
    backend = HeldBack(FakeBackend(), decoded.reached)
    options = {"workers": workers, "batch_size": batch_size, "queue_size": queue_size}
    run = pipeline(decoded.wrap(fake_decode()), backend, **options)
    assert len(list(run.run(str(i) for i in range(60)))) == 60
    assert backend.opened == [True] and run.stats.peak_queued == queue_size
    # decoders holding a finished video + the queue + the batcher's share
    assert run.stats.peak_decoded <= workers + queue_size + 3 * batch_size + 1


def test_the_window_stops_taking_inputs_while_a_result_waits():
    taken, waited, window = [], [], 16

    def sources():
        for i in range(200):
            taken.append(i)
            yield str(i)

    finished = Tally(window - 1)

    def decode(source):
        if source == "0":  # waits until its window is full of finished results
            waited.append((finished.reached.wait(WAIT_S), len(taken)))
        return fake_decode()(source)

    options = {"workers": 2, "batch_size": 3, "window": window}
    run = pipeline(decode, FakeBackend(), finished.wrap(finish), **options)
    results = run.run(sources())
    assert next(results) == ("ok", 0)
    assert waited == [(True, window)]  # the window filled, and not one input more was taken
    assert len(taken) <= window + 1  # video 0's slot is free once its result is out
    results.close()  # stopping early ends the threads


def test_an_input_iterable_that_fails_ends_the_run_with_its_error():
    def sources():
        yield "0"
        raise OSError("listing went away")

    with pytest.raises(OSError, match="listing went away"):
        list(pipeline(fake_decode(), FakeBackend(), workers=2).run(sources()))


def test_options_are_checked():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        PipelineOptions(workers=1, batch_size=0).resolved()
    with pytest.raises(ValueError, match="timeout_s must be more than 0"):
        PipelineOptions(workers=1, timeout_s=0).resolved()
    assert PipelineOptions().resolved().workers >= 1


# --------------------------------------------------------------------------- with real parts
# The behaviours above again, on tiny real videos decoded by PyAV and the tiny r2p1d engine in
# ONNX Runtime, through the pipeline Scorer.score_many builds (heke_runtime/scorer.py). A real
# file cannot be made slow on purpose (decode.py refuses a FIFO as an empty file before FFmpeg
# opens it), so a slow file is a real one whose decode starts only when an event is set.


@pytest.fixture(scope="module")
def scorer():
    with Scorer(tiny_engine("r2p1d_HEKE_4"), threads=1) as opened:
        yield opened


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Real videos of 12 snippets: two of one frame size and different content, one of
    another size, a copy standing for a slow file, a truncated copy and a file of garbage."""
    folder = tmp_path_factory.mktemp("tiny")
    wide = make_video(folder / "wide.mp4", size=(48, 32), frames=36)
    garbage = folder / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 16)
    return SimpleNamespace(
        wide=wide,
        wide_long=make_video(folder / "wide_long.mp4", size=(48, 32), frames=60),
        narrow=make_video(folder / "narrow.mp4", size=(32, 24), frames=36),
        slow=shutil.copyfile(wide, folder / "slow.mp4"),
        truncated=truncate_file(wide, folder / "truncated.mp4", 0.5),
        garbage=garbage,
    )


def scorer_pipeline(scorer, backend=None, *, decode=None, done=None, **options):
    """The pipeline ``Scorer.score_many`` builds, with options it does not expose and, where
    given, a step swapped for one the test watches or holds."""
    return Pipeline(
        decode or scorer.decode,
        run_batches_with(backend or scorer.backend),
        done or scorer.result,
        scorer.failure,
        PipelineOptions(**options),
    )


class RejectsOneBatch(OnnxRuntimeBackend):
    """The real ONNX Runtime backend, except that its ``bad``-th batch reaches ONNX Runtime as
    float64, which ONNX Runtime refuses. Every real input of this model runs (frames too small
    give NaN statistics, not an error), so this is how one batch fails in the real engine."""

    def __init__(self, artifact, bad):
        super().__init__(artifact, provider="cpu", threads=1)
        self.bad, self.calls = bad, 0

    def _infer(self, inputs):
        self.calls += 1
        if self.calls == self.bad:
            inputs = {name: array.astype(np.float64) for name, array in inputs.items()}
        return super()._infer(inputs)


def test_real_slow_file_does_not_stall_the_others(scorer, tiny):
    paths = [tiny.wide, tiny.narrow, tiny.slow, *[tiny.wide_long, tiny.narrow] * 3]
    finished = Tally(len(paths) - 1)
    waited: list[bool] = []
    decode = holding(scorer.decode, tiny.slow, finished.reached, waited)
    run = scorer_pipeline(scorer, decode=decode, done=finished.wrap(scorer.result), workers=2)
    results = list(run.run(paths))
    assert [(r.path, r.status) for r in results] == [(str(p), "ok") for p in paths]
    # The slow file's decode began only once every other file was decoded, inferred and
    # finished, and its result still came third.
    assert waited == [True] and finished.seen[-1].path == str(tiny.slow)


def test_real_broken_files_and_a_failing_batch_fail_alone(scorer, tiny):
    paths = [tiny.wide, tiny.narrow, tiny.garbage, tiny.truncated, *[tiny.wide, tiny.narrow] * 2]
    # 12 snippets per video in batches of 3: no batch holds two videos, so the rejected
    # batch is one video's.
    with RejectsOneBatch(scorer.engine_path, bad=6) as backend:
        run = scorer_pipeline(scorer, backend, workers=2, batch_size=3)
        results = list(run.run(paths))
    assert [r.path for r in results] == [str(p) for p in paths]
    errors = {i: r.error for i, r in enumerate(results) if not r.ok}
    broken = "not a video file FFmpeg can read, or damaged/truncated"
    assert broken in errors.pop(2) and broken in errors.pop(3)
    (engine_error,) = errors.values()  # every other video scored
    assert "INVALID_ARGUMENT" in engine_error
    assert run.stats.failed_decode == 2 and run.stats.decoded_alive == 0


def test_real_snippets_of_equal_shape_are_batched_across_videos(scorer, tiny):
    paths = [tiny.wide, tiny.narrow, tiny.wide_long, tiny.narrow]
    # One decoder, room for every video, and the first batch held until all are decoded:
    # whenever the batcher looks, the next video is queued.
    decoded = Tally(len(paths))
    backend = HeldBack(scorer.backend, decoded.reached)
    options = {"workers": 1, "queue_size": len(paths), "batch_size": 5}
    run = scorer_pipeline(scorer, backend, decode=decoded.wrap(scorer.decode), **options)
    results = list(run.run(paths))
    assert backend.opened == [True] and max(run.stats.batch_sizes) == 5
    # Alone, a video's 12 snippets take 3 batches of at most 5: with fewer, some batch held
    # two videos' snippets. Both frame sizes ran, in batches of their own.
    assert run.stats.batches < 3 * len(paths) and run.stats.snippets == 12 * len(paths)
    assert len(set(backend.shapes)) == 2
    for path, result in zip(paths, results):  # each video got its own rows back
        assert result.scores == pytest.approx(scorer.score(path).scores, rel=1e-5, abs=1e-6)


def test_real_memory_stays_bounded_when_inference_is_the_bottleneck(scorer, tiny):
    workers, queue_size, batch_size = 3, 2, 4
    decoded = Tally(1 + queue_size + workers)  # as far as decoding can go (fakes' test above)
    backend = HeldBack(scorer.backend, decoded.reached)
    options = {"workers": workers, "batch_size": batch_size, "queue_size": queue_size}
    run = scorer_pipeline(scorer, backend, decode=decoded.wrap(scorer.decode), **options)
    results = list(run.run([tiny.wide] * 10))
    assert backend.opened == [True] and all(r.ok for r in results)
    stats = run.stats
    assert stats.peak_queued == queue_size and stats.decoded_alive == 0
    assert stats.peak_decoded <= workers + queue_size + 3 * batch_size + 1


def test_real_window_stops_taking_inputs_while_a_result_waits(scorer, tiny):
    taken, waited, window = [], [], 16

    def sources():
        for i in range(200):
            taken.append(i)
            yield tiny.slow if i == 0 else tiny.wide

    finished, decoded = Tally(window - 1), Tally()

    def decode(source):
        if source == tiny.slow:  # waits until its window is full of finished results
            waited.append((finished.reached.wait(WAIT_S), len(taken)))
        return scorer.decode(source)

    options = {"workers": 2, "batch_size": 3, "window": window}
    done = finished.wrap(scorer.result)
    run = scorer_pipeline(scorer, decode=decoded.wrap(decode), done=done, **options)
    results = run.run(sources())
    first = next(results)
    results.close()
    assert first.path == str(tiny.slow) and first.ok
    assert waited == [(True, window)]  # the window filled, and not one input more was taken
    assert len(taken) <= window + 1  # the slow file's slot is free once its result is out
    # A decoder that took one more input before the close ends it, not the next test.
    assert wait_for(lambda: len(decoded.seen) == len(taken))


# --------------------------------------------------------------------------- decode timeout
# A hung FFmpeg cannot be produced on purpose, so a decode that blocks on an Event stands in
# for one; the pipeline, its threads and the backend are the real ones.


class HangingDecode:
    """``fake_decode``, except that the inputs in ``hung`` block until ``release`` is set and
    then return a valid video (or raise): what an abandoned decoder hands back too late. A
    timeout that never fires shows as that late result (WAIT_S on), not as a hang."""

    def __init__(self, hung, release, late_error=False):
        self.hung, self.release, self.late_error = hung, release, late_error
        self.returned: list[int] = []  # the hung inputs whose decode returned at last
        self.threads: list[threading.Thread] = []  # the threads that decoded them

    def __call__(self, source):
        if int(source) in self.hung:
            self.threads.append(threading.current_thread())
            self.release.wait(WAIT_S)
            self.returned.append(int(source))
            if self.late_error:
                raise OSError("FFmpeg gave up at last")
        return fake_decode()(source)


def counting(fail_calls):
    def fail_and_count(source, exc, started):
        fail_calls.append(int(source))
        return fail(source, exc, started)

    return fail_and_count


@pytest.mark.parametrize("late_error", [False, True])
def test_a_hung_decode_times_out_and_the_others_are_scored_in_order(late_error):
    release, backend = threading.Event(), FakeBackend()
    fail_calls: list[int] = []
    decode = HangingDecode({3}, release, late_error)
    # A window of 4: without the timeout, video 3 would stall the run for good.
    options = PipelineOptions(workers=2, batch_size=3, window=4, timeout_s=0.3)
    run = Pipeline(decode, run_batches_with(backend), finish, counting(fail_calls), options)
    results = list(run.run(str(i) for i in range(12)))
    assert decode.returned == []  # every result came while video 3 still hung
    reason = "decoding took longer than 0.3 s (--timeout); skipped"
    assert results == [("error", 3, reason) if i == 3 else ("ok", i) for i in range(12)]
    assert run.stats.timed_out == 1 and run.stats.failed_decode == 0
    release.set()  # the abandoned decode returns now: dropped, never reported or run
    assert ended(decode.threads) and decode.returned == [3]  # its thread ran to its end
    assert fail_calls == [3] and all(3 not in call for call in backend.calls)
    assert run.stats.snippets == 11 * 3 and run.stats.decoded_alive == 0


def test_results_are_unchanged_when_no_timeout_fires():
    def results(**options):
        finished = Tally(9)
        waited: list[bool] = []
        decode = holding(fake_decode(), "2", finished.reached, waited)  # finishes last
        run = pipeline(decode, FakeBackend(), finished.wrap(finish), workers=2, **options)
        return list(run.run(str(i) for i in range(10))), waited, run.stats

    plain, _, _ = results()
    timed, waited, stats = results(timeout_s=2 * WAIT_S)
    assert timed == plain == [("ok", i) for i in range(10)]
    assert waited == [True] and stats.timed_out == 0


def test_abandoned_decoders_are_bounded_and_then_the_rest_fail_unread():
    """One worker: the first hung decoder is replaced; the second was the last one within
    the bound, so its replacement fails the remaining inputs instead of decoding them."""
    release, backend = threading.Event(), FakeBackend()
    decode = HangingDecode({0, 1}, release)
    run = pipeline(decode, backend, workers=1, batch_size=2, timeout_s=0.2)
    results = list(run.run(str(i) for i in range(5)))
    timed_out = "decoding took longer than 0.2 s (--timeout); skipped"
    unread = "skipped unread: 2 earlier files still decode past --timeout"
    assert results == [("error", i, timed_out if i < 2 else unread) for i in range(5)]
    assert backend.calls == [] and run.stats.timed_out == 2
    release.set()
    assert ended(decode.threads) and sorted(decode.returned) == [0, 1]


def test_scorer_timeout_gives_an_error_record_and_scores_the_rest(mixed):
    release, returned = threading.Event(), threading.Event()
    hung = str(mixed[1])

    class HangingScorer(Scorer):
        def decode(self, path):
            if str(path) != hung:
                return super().decode(path)
            release.wait(WAIT_S)  # past the timeout below, unless the pipeline broke
            try:
                return super().decode(path)
            finally:
                returned.set()

    with pytest.raises(ScorerError, match="timeout must be more than 0"):
        Scorer(tiny_engine("r2p1d_HEKE_4"), timeout=0)
    try:
        with HangingScorer(tiny_engine("r2p1d_HEKE_4"), workers=2, timeout=1.0) as scorer:
            results = list(scorer.score_many(mixed))
    finally:
        release.set()
        # Its warning capture must end before the next test swaps the warning filters.
        assert returned.wait(WAIT_S)
    assert [r.path for r in results] == [str(p) for p in mixed]
    assert results[1].error == "decoding took longer than 1 s (--timeout); skipped"
    assert [r.ok for r in results] == [i not in (1, 3) for i in range(len(mixed))]  # 3: broken


def test_call_with_timeout_returns_raises_or_gives_up_with_the_reason():
    assert call_with_timeout(lambda: 42, 5.0, "never") == 42
    with pytest.raises(OSError, match="broken"):
        call_with_timeout(lambda: (_ for _ in ()).throw(OSError("broken")), 5.0, "never")
    release, before = threading.Event(), abandoned_calls()
    try:
        with pytest.raises(DecodeTimeoutError, match=r"^took too long$"):
            call_with_timeout(lambda: release.wait(WAIT_S), 0.1, "took too long")
        assert abandoned_calls() == before + 1  # still blocked: counted until it returns
    finally:
        release.set()
    assert wait_for(lambda: abandoned_calls() == before)


def test_warnings_are_captured_per_thread():
    seen, together = {}, threading.Barrier(8)

    def work(i):
        with captured_warnings() as caught:
            together.wait(WAIT_S)  # all eight captures are active before any warns
            warnings.warn(f"from {i}", ShortVideoWarning, stacklevel=1)
        seen[i] = caught

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    assert ended(threads)
    assert seen == {i: [f"from {i}"] for i in range(8)}
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        warnings.warn("not captured", UserWarning, stacklevel=1)
    assert [str(w.message) for w in outside] == ["not captured"]


def test_captures_survive_a_hook_set_while_an_abandoned_decode_holds_one():
    # A decode given up on past --timeout keeps its capture open; when the caller then sets
    # its own warnings hook (pytest does, per test), later captures must still get their
    # thread's warnings, and other warnings must still reach the caller's hook.
    holding, release = threading.Event(), threading.Event()

    def abandoned():
        with captured_warnings():
            holding.set()
            release.wait(WAIT_S)

    thread = threading.Thread(target=abandoned)
    thread.start()
    assert holding.wait(WAIT_S)
    theirs: list[str] = []
    routed = warnings.showwarning
    warnings.showwarning = lambda message, *rest: theirs.append(str(message))
    try:
        with captured_warnings() as mine:
            warnings.warn("a later video's", ShortVideoWarning, stacklevel=1)
        warnings.warn("the caller's", UserWarning, stacklevel=1)
    finally:
        warnings.showwarning = routed
        release.set()
    assert ended([thread])
    assert (mine, theirs) == (["a later video's"], ["the caller's"])
