"""Sampling plan and reference preprocessing vs the authors' outputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from heke_ref.preprocess import block_average, clips_from_yuv, reference_pairs
from heke_runtime.sampling import (
    ShortVideoWarning,
    block_scale,
    clip_plan,
    model_input_size,
    pair_plan,
)
from heke_runtime.yuv import read_yuv420p_frames, yuv420p_frame_count
from tests.conftest import reference_file


@pytest.fixture(scope="module")
def upstream():
    with np.load(reference_file("upstream_preprocess.npz")) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def yuv_file(upstream, tmp_path_factory):
    path = tmp_path_factory.mktemp("yuv") / "clip_320x272.yuv"
    path.write_bytes(upstream["yuv420p"].tobytes())
    return path


@pytest.mark.parametrize("snippets", [12, 10])
def test_frame_plan_equals_the_authors_for_every_frame_count(upstream, snippets):
    expected = upstream[f"sampling_T{snippets}"]
    for count, want in zip(upstream["sampling_F"], expected, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no stored count is short enough to warn
            got = clip_plan(int(count), snippets)
        np.testing.assert_array_equal(got, want, err_msg=f"F={count}")


def test_yuv420p_reads_as_the_authors_rgb24_exactly(upstream, yuv_file):
    width, height = int(upstream["width"]), int(upstream["height"])
    count = yuv420p_frame_count(yuv_file, width, height)
    assert count == int(upstream["frames"]) == 40
    frames = dict(read_yuv420p_frames(yuv_file, width, height, range(count)))
    np.testing.assert_array_equal(np.stack([frames[i] for i in range(count)]), upstream["rgb24"])


def test_reference_clips_equal_snippets_0_and_11(upstream, yuv_file):
    clips = clips_from_yuv(yuv_file, int(upstream["width"]), int(upstream["height"]))
    assert clips.shape == (12, 3, 8, 136, 160)
    assert np.abs(clips[[0, 11]] - upstream["clips_first_last"]).max() <= 1e-5


def test_block_average_matches_a_direct_mean():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(37, 53, 3)).astype(np.float32)
    pooled = block_average(image, 3)
    direct = image[:36, :51].reshape(12, 3, 17, 3, 3).mean(axis=(1, 3))
    assert pooled.shape == (12, 17, 3)
    np.testing.assert_allclose(pooled, direct, atol=1e-4)


@pytest.mark.parametrize(
    ("width", "height", "scale"),
    [
        (176, 144, 1),
        (320, 272, 2),
        (640, 360, 2),
        (768, 432, 2),
        (1280, 720, 3),
        (1920, 1080, 4),
        (3840, 2160, 8),
        (1080, 1920, 4),
        (32, 24, 1),
    ],
)
def test_block_scale_rule(width, height, scale):
    assert block_scale(width, height) == scale
    assert model_input_size(width, height) == (height // scale, width // scale)


@pytest.mark.parametrize("count", [1, 2, 12, 23, 30, 35])
def test_short_videos_get_valid_indices_and_a_warning(count):
    with pytest.warns(ShortVideoWarning, match=f"{count} frames"):
        plan = clip_plan(count, 12)
    assert plan.shape == (12, 8)
    assert plan.min() >= 0 and plan.max() <= count - 1


def test_plan_is_unchanged_where_the_authors_formula_is_valid():
    # F=30 is short (warns) but upstream's indices are all in range: keep them as they are.
    with pytest.warns(ShortVideoWarning):
        plan = clip_plan(30, 12)
    stride = (30 - 20 - 16) / 11
    starts = [int(i * stride + 9) for i in range(12)]
    np.testing.assert_array_equal(plan[:, 0], starts)


def test_pair_plan_for_the_resnet_model():
    plan = pair_plan(250, 20)
    stride = (250 - 20 - 2) / 19
    np.testing.assert_array_equal(plan[:, 0], [int(i * stride + 9) for i in range(20)])
    np.testing.assert_array_equal(plan[:, 1] - plan[:, 0], 2)
    assert pair_plan(1000)[0, 1] - pair_plan(1000)[0, 0] == 4


def test_reference_pairs_are_frame_and_difference():
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, size=(60, 48, 64, 3), dtype=np.uint8)
    rgb, dif = reference_pairs(lambda i: video[i], 60, 64, 48)
    assert rgb.shape == dif.shape == (20, 3, 48, 64)
    plan = pair_plan(60)
    from heke_ref.preprocess import frame_to_input

    np.testing.assert_allclose(rgb[3], frame_to_input(video[plan[3, 0]], 1))
    np.testing.assert_allclose(
        dif[3], frame_to_input(video[plan[3, 1]], 1) - frame_to_input(video[plan[3, 0]], 1)
    )
