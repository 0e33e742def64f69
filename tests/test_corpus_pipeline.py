"""The corpus stages without Ray: what a decode task ships and what the actor makes of it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="the corpus stages need pyarrow (heke[ray])")

from heke_corpus import pipeline as corpus_pipeline  # noqa: E402
from heke_corpus.pipeline import (  # noqa: E402
    MAX_ABANDONED,
    finish_decoded,
    input_rows,
    pack_decoded,
    prepare_batch,
    score_prepared,
    unpack_decoded,
)
from heke_runtime.pipeline import ABANDONED, abandoned_calls, timeout_reason  # noqa: E402
from heke_runtime.scorer import Scorer, decode_video  # noqa: E402
from tests.test_backends import tiny_engine  # noqa: E402
from tests.test_pipeline import wait_for  # noqa: E402
from tests.test_raw_formats import _rawvideo  # noqa: E402
from tests.test_sources_live import trickling_server  # noqa: E402
from tests.videos import corrupt_file, make_video  # noqa: E402


@pytest.mark.filterwarnings("ignore::heke_runtime.sampling.ShortVideoWarning")  # 30 frames
@pytest.mark.parametrize(("model", "snippets"), [("r2p1d_HEKE_4", 12), ("resnet_HEKE_4", 20)])
def test_actor_inputs_equal_the_scorers_and_sums_cross_ray(tmp_path, model, snippets) -> None:
    path = str(make_video(tmp_path / "v.mp4", size=(96, 54), frames=30))
    want = decode_video(path, model, snippets, None)
    shipped = decode_video(path, model, snippets, None, sums_only=True)
    meta, tensor = pack_decoded(shipped)
    got = finish_decoded(unpack_decoded(meta, tensor), model)
    assert got.inputs.keys() == want.inputs.keys()
    for name, array in want.inputs.items():
        assert got.inputs[name].dtype == array.dtype and np.array_equal(got.inputs[name], array)
    assert got.warnings == want.warnings and np.array_equal(got.plan, want.plan)
    # What crosses the object store: uint16 sums of distinct frames, at most half the floats.
    assert shipped.inputs["sums"].dtype == np.uint16
    assert 2 * tensor.size <= sum(a.nbytes for a in want.inputs.values())


def test_a_file_that_cannot_be_decoded_is_a_prep_error(tmp_path) -> None:
    bad = tmp_path / "junk.mp4"
    bad.write_bytes(b"not a video")
    rows = input_rows([str(bad)], [None], [None])
    prepared = prepare_batch(rows, model="r2p1d_HEKE_4", num_snippets=12, size=None)
    row = prepared.drop_columns(["tensor"]).to_pylist()[0]
    assert row["decoded"] is None and row["prep_error"]
    assert prepared.column("tensor").to_pylist() == [b""]


# --------------------------------------------------------------------------- decode timeout
# A hung FFmpeg cannot be produced on purpose (FIFOs are refused before FFmpeg opens them),
# so the hang tests swap the module's decode_video, which prepare_batch looks up at call
# time, for one that blocks on an Event before calling the real one. Nothing is timed: a
# timeout that never fires shows as a decoded row once the wait gives up (WAIT_S), not a hang.

MODEL, SNIPPETS = "r2p1d_HEKE_4", 12
WAIT_S = 60.0  # the longest a hung decode waits: reached only when the timeout broke


def prepare(paths, **options):
    """prepare_batch over ``paths``: its rows (without tensors) and the table."""
    rows = input_rows([str(p) for p in paths], [None] * len(paths), [None] * len(paths))
    table = prepare_batch(rows, model=MODEL, num_snippets=SNIPPETS, size=None, **options)
    return table.drop_columns(["tensor"]).to_pylist(), table


@pytest.fixture
def clips(tmp_path):
    """Two real videos of different sizes and a file that is not a video."""
    bad = tmp_path / "junk.mp4"
    bad.write_bytes(b"not a video")
    a = make_video(tmp_path / "a.mp4", size=(96, 54), frames=36)
    return [a, make_video(tmp_path / "b.mp4", size=(64, 48), frames=36), bad]


@pytest.fixture
def hang(monkeypatch):
    """``hang(paths)``: decoding those paths blocks until the test ends (then runs)."""
    release, real = threading.Event(), corpus_pipeline.decode_video

    def start(paths):
        hung = {str(p) for p in paths}

        def decode(path, *args, **kwargs):
            if str(path) in hung:
                release.wait(WAIT_S)
            return real(path, *args, **kwargs)

        monkeypatch.setattr(corpus_pipeline, "decode_video", decode)

    yield start
    release.set()
    for thread in threading.enumerate():
        if thread.name == ABANDONED:
            thread.join(WAIT_S)
    assert abandoned_calls() == 0  # the next test starts with none abandoned


@pytest.mark.filterwarnings("ignore::heke_runtime.sampling.ShortVideoWarning")
def test_with_a_timeout_that_does_not_fire_videos_score_as_with_heke_run(clips):
    _, plain = prepare(clips)
    rows, table = prepare(clips, timeout_s=30.0)
    assert table.drop_columns(["prep_s"]).equals(plain.drop_columns(["prep_s"]))
    tensors = corpus_pipeline.binary_values(table.column("tensor"))
    with Scorer(tiny_engine(MODEL), num_snippets=SNIPPETS, workers=0) as scorer:
        for path, row, tensor in zip(clips, rows, tensors):
            got = score_prepared(scorer, row["path"], row["decoded"], tensor, row["prep_error"])
            want = scorer.score(path)
            assert (got.status, got.error, got.warnings) == (want.status, want.error, want.warnings)
            assert got.scores == pytest.approx(want.scores, abs=1e-6)
    assert [r["prep_error"] is None for r in rows] == [True, True, False]


@pytest.mark.filterwarnings("ignore::heke_runtime.sampling.ShortVideoWarning")
@pytest.mark.timeout(4 * WAIT_S)  # the task itself hanging is what this test is about
def test_a_hung_decode_is_heke_runs_timeout_record_and_the_task_goes_on(clips, hang):
    # 2 s: far past the good file's decode (tens of ms) even on a busy machine.
    hang(clips[:1])
    rows, _ = prepare(clips, timeout_s=2.0)
    assert abandoned_calls() == 1  # the rows came back while that decode still hung
    reason = "decoding took longer than 2 s (--timeout); skipped"
    assert rows[0]["prep_error"] == reason and rows[0]["decoded"] is None
    assert rows[1]["prep_error"] is None and rows[1]["decoded"] is not None
    assert rows[2]["prep_error"] and rows[2]["prep_error"] != reason
    with Scorer(tiny_engine(MODEL), num_snippets=SNIPPETS, workers=0) as scorer:
        record = score_prepared(scorer, rows[0]["path"], None, pa.py_buffer(b""), reason)
    assert record.error == reason  # what heke-run --timeout 2 records


@pytest.mark.timeout(4 * WAIT_S)
def test_a_worker_holding_too_many_hung_decodes_fails_the_rest_unread(clips, hang):
    hung = clips[:MAX_ABANDONED]
    hang(hung)
    rows, _ = prepare([*hung, clips[-1]], timeout_s=0.2)
    timed_out = "decoding took longer than 0.2 s (--timeout); skipped"
    unread = f"skipped unread: {MAX_ABANDONED} earlier files still decode past --timeout"
    errors = [r["prep_error"] for r in rows]
    assert errors == [timed_out] * MAX_ABANDONED + [f"{unread} in this Ray worker"]
    assert abandoned_calls() == MAX_ABANDONED


@pytest.mark.timeout(4 * WAIT_S)
def test_an_endless_url_stops_being_copied_at_the_timeout(clips):
    # The decode gives up at --timeout and the copy of a stream that never ends stops at the
    # same limit: the abandoned thread ends instead of copying for the worker's lifetime.
    with trickling_server() as port:
        rows, _ = prepare([f"http://127.0.0.1:{port}/live.ts", clips[0]], timeout_s=1.0)
        assert [r["prep_error"] for r in rows] == [timeout_reason(1.0), None]
        wait_for(lambda: abandoned_calls() == 0, WAIT_S)
        assert abandoned_calls() == 0  # while the server still sends


# --------------------------------------------------------------------------- decode options


def test_decode_tasks_take_heke_runs_decode_options(tmp_path) -> None:
    """--pix-fmt, --on-damage and --hdr reach the decode tasks (through the ``decoding``
    dict build_dataset hands them): each changes what a real file gives."""
    # 31 frames of 4:2:2 are not a whole number of 4:2:0 frames: the default must fail
    lossless = make_video(tmp_path / "c.mkv", codec="ffv1", pix_fmt="yuv422p", frames=31)
    raw = _rawvideo(lossless, tmp_path / "c.yuv")
    damaged = corrupt_file(
        make_video(tmp_path / "d.mp4", frames=60), tmp_path / "bad.mp4", length=50
    )

    def prepared(path, size=None, **decoding):
        rows = input_rows([str(path)], [None], [None])
        table = prepare_batch(
            rows, model="r2p1d_HEKE_4", num_snippets=12, size=size, decoding=decoding
        )
        return table.drop_columns(["tensor"]).to_pylist()[0]

    assert "yuv420p frames" in prepared(raw, [64, 48])["prep_error"]  # read as the default
    assert prepared(raw, [64, 48], pix_fmt="yuv422p")["prep_error"] is None
    assert "damaged" in prepared(damaged)["prep_error"]
    assert prepared(damaged, on_damage="conceal")["prep_error"] is None
