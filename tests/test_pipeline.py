"""The pipelined runtime: the same results as the sequential path, in input order, with bounded
memory, and no stall or loss from a slow, broken or unlucky file."""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

from heke_runtime.cli import main
from heke_runtime.pipeline import (
    DecodeTimeoutError,
    Pipeline,
    PipelineOptions,
    abandoned_calls,
    call_with_timeout,
    captured_warnings,
    run_batches_with,
)
from heke_runtime.results import read_records
from heke_runtime.sampling import ShortVideoWarning
from heke_runtime.scorer import Scorer, ScorerError
from tests.test_backends import tiny_engine
from tests.videos import make_video

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


def fake_decode(sizes=None, slow=None, broken=(), delay=0.0):
    def decode(source):
        number = int(source)
        if number in broken:
            raise ValueError(f"video {number} is broken")
        time.sleep(slow[1] if slow and number == slow[0] else delay)
        width = (sizes or {}).get(number, 8)
        clips = np.full((3, 2, width), number, dtype=np.float32)
        return Fake(number, {"clips": clips})

    return decode


class FakeBackend:
    def __init__(self, delay=0.0, fail_on=None):
        self.delay, self.fail_on = delay, fail_on
        self.calls, self.lock = [], threading.Lock()

    def infer(self, inputs):
        clips = inputs["clips"]
        with self.lock:
            self.calls.append(sorted(set(clips[:, 0, 0].astype(int).tolist())))
        if self.fail_on is not None and self.fail_on in clips[:, 0, 0]:
            raise RuntimeError("the engine broke on this batch")
        time.sleep(self.delay)
        return {"heads": clips[:, 0, :1] * 2.0}


def finish(decoded, outputs, started):
    heads = outputs["heads"]
    assert heads.shape[0] == 3 and np.all(heads == 2 * decoded.number)  # its own rows, in order
    return ("ok", decoded.number)


def fail(source, exc, started):
    return ("error", int(source), str(exc))


def pipeline(decode, backend, **options):
    return Pipeline(decode, run_batches_with(backend), finish, fail, PipelineOptions(**options))


def test_order_is_stable_and_a_slow_file_does_not_stall_the_others():
    backend = FakeBackend()
    run = pipeline(fake_decode(slow=(2, 1.0)), backend, workers=3, batch_size=3)
    started = time.perf_counter()
    results = list(run.run(str(i) for i in range(30)))
    assert results == [("ok", i) for i in range(30)]
    # While video 2 decoded for a second, the others were decoded and inferred meanwhile.
    first_with_2 = next(i for i, call in enumerate(backend.calls) if 2 in call)
    assert first_with_2 > 10 and time.perf_counter() - started < 3.0


def test_broken_files_and_a_failing_batch_fail_alone():
    backend = FakeBackend(fail_on=7)
    run = pipeline(fake_decode(broken={3, 4}), backend, workers=2, batch_size=3)
    results = list(run.run(str(i) for i in range(12)))
    assert [r[0] for r in results].count("ok") == 9
    assert results[3] == ("error", 3, "video 3 is broken") and results[4][0] == "error"
    assert results[7] == ("error", 7, "the engine broke on this batch")  # batch of one video


def test_snippets_of_equal_shape_are_batched_across_videos():
    sizes = {i: 8 if i % 2 else 16 for i in range(10)}
    backend = FakeBackend(delay=0.02)  # slower than decoding: batches fill up
    run = pipeline(fake_decode(sizes=sizes), backend, workers=2, batch_size=5)
    assert [r[1] for r in run.run(str(i) for i in range(10))] == list(range(10))
    assert run.stats.snippets == 30 and max(run.stats.batch_sizes) == 5
    assert any(len(call) > 1 for call in backend.calls)  # one batch, several videos
    assert all(len({sizes[v] for v in call}) == 1 for call in backend.calls)  # never mixed


def test_memory_stays_bounded_when_inference_is_the_bottleneck():
    backend = FakeBackend(delay=0.01)
    options = {"workers": 3, "batch_size": 4, "queue_size": 2}
    run = pipeline(fake_decode(), backend, **options)
    assert len(list(run.run(str(i) for i in range(60)))) == 60
    assert run.stats.peak_queued <= 2
    # decoders holding a finished video + the queue + the batcher's share
    assert run.stats.peak_decoded <= 3 + 2 + 3 * 4 + 1


def test_the_window_stops_taking_inputs_while_a_result_waits():
    taken = []

    def sources():
        for i in range(200):
            taken.append(i)
            yield str(i)

    run = pipeline(fake_decode(slow=(0, 0.5)), FakeBackend(), workers=2, batch_size=3, window=16)
    results = run.run(sources())
    assert next(results) == ("ok", 0)
    assert len(taken) <= 16 + 1  # not the whole input while video 0 was slow
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


# --------------------------------------------------------------------------- decode timeout
# A hung FFmpeg cannot be produced on purpose, so a decode that blocks on an Event stands in
# for one; the pipeline, its threads and the backend are the real ones.


def hanging_decode(hung, release, late_error=False):
    """``fake_decode``, except that the inputs in ``hung`` block until ``release`` is set and
    then return a valid video (or raise): what an abandoned decoder hands back too late."""
    plain, returned = fake_decode(), []

    def decode(source):
        if int(source) in hung:
            release.wait()
            returned.append(int(source))
            if late_error:
                raise OSError("FFmpeg gave up at last")
        return plain(source)

    decode.returned = returned
    return decode


def counting(fail_calls):
    def fail_and_count(source, exc, started):
        fail_calls.append(int(source))
        return fail(source, exc, started)

    return fail_and_count


def wait_for(condition, seconds=2.0):
    deadline = time.perf_counter() + seconds
    while not condition() and time.perf_counter() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.mark.parametrize("late_error", [False, True])
def test_a_hung_decode_times_out_and_the_others_are_scored_in_order(late_error):
    release, backend, fail_calls = threading.Event(), FakeBackend(), []
    decode = hanging_decode({3}, release, late_error)
    # A window of 4: without the timeout, video 3 would stall the run for good.
    options = PipelineOptions(workers=2, batch_size=3, window=4, timeout_s=0.3)
    run = Pipeline(decode, run_batches_with(backend), finish, counting(fail_calls), options)
    started = time.perf_counter()
    results = list(run.run(str(i) for i in range(12)))
    assert time.perf_counter() - started < 2.0
    reason = "decoding took longer than 0.3 s (--timeout); skipped"
    assert results == [("error", 3, reason) if i == 3 else ("ok", i) for i in range(12)]
    assert run.stats.timed_out == 1 and run.stats.failed_decode == 0
    release.set()  # the abandoned decode returns now: dropped, never reported or run
    assert wait_for(lambda: decode.returned == [3])
    time.sleep(0.05)  # its thread runs on past the return
    assert fail_calls == [3] and all(3 not in call for call in backend.calls)
    assert run.stats.snippets == 11 * 3 and run.stats.decoded_alive == 0


def test_results_are_unchanged_when_no_timeout_fires():
    def results(**options):
        run = pipeline(fake_decode(slow=(2, 0.2)), FakeBackend(), workers=2, **options)
        return list(run.run(str(i) for i in range(10))), run.stats

    plain, _ = results()
    timed, stats = results(timeout_s=5.0)
    assert timed == plain == [("ok", i) for i in range(10)] and stats.timed_out == 0


def test_abandoned_decoders_are_bounded_and_then_the_rest_fail_unread():
    """One worker: the first hung decoder is replaced; the second was the last one within
    the bound, so its replacement fails the remaining inputs instead of decoding them."""
    release, backend = threading.Event(), FakeBackend()
    decode = hanging_decode({0, 1}, release)
    run = pipeline(decode, backend, workers=1, batch_size=2, timeout_s=0.2)
    started = time.perf_counter()
    results = list(run.run(str(i) for i in range(5)))
    assert time.perf_counter() - started < 2.0
    timed_out = "decoding took longer than 0.2 s (--timeout); skipped"
    unread = "skipped unread: 2 earlier files still decode past --timeout"
    assert results == [("error", i, timed_out if i < 2 else unread) for i in range(5)]
    assert backend.calls == [] and run.stats.timed_out == 2
    release.set()
    assert wait_for(lambda: sorted(decode.returned) == [0, 1])


def test_scorer_timeout_gives_an_error_record_and_scores_the_rest(mixed):
    release, returned = threading.Event(), threading.Event()
    hung = str(mixed[1])

    class HangingScorer(Scorer):
        def decode(self, path):
            if str(path) != hung:
                return super().decode(path)
            release.wait()
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
        assert returned.wait(5.0)
    assert [r.path for r in results] == [str(p) for p in mixed]
    assert results[1].error == "decoding took longer than 1 s (--timeout); skipped"
    assert [r.ok for r in results] == [i not in (1, 3) for i in range(len(mixed))]  # 3: broken


def test_call_with_timeout_returns_raises_or_gives_up_with_the_reason():
    assert call_with_timeout(lambda: 42, 5.0, "never") == 42
    with pytest.raises(OSError, match="broken"):
        call_with_timeout(lambda: (_ for _ in ()).throw(OSError("broken")), 5.0, "never")
    release, before = threading.Event(), abandoned_calls()
    started = time.perf_counter()
    try:
        with pytest.raises(DecodeTimeoutError, match=r"^took too long$"):
            call_with_timeout(release.wait, 0.1, "took too long")
        assert 0.1 <= time.perf_counter() - started < 1.0
        assert abandoned_calls() == before + 1  # still blocked: counted until it returns
    finally:
        release.set()
    assert wait_for(lambda: abandoned_calls() == before)


def test_warnings_are_captured_per_thread():
    seen = {}

    def work(i):
        with captured_warnings() as caught:
            time.sleep(0.01 * (i % 3))
            warnings.warn(f"from {i}", ShortVideoWarning, stacklevel=1)
        seen[i] = caught

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {i: [f"from {i}"] for i in range(8)}
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        warnings.warn("not captured", UserWarning, stacklevel=1)
    assert [str(w.message) for w in outside] == ["not captured"]
