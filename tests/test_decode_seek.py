"""Seek-based sampling gives exactly the frames of full sequential decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heke_runtime.decode import SEEK_MIN_SKIP, _seek_runs, probe_video, read_frames
from heke_runtime.sampling import clip_plan
from tests import videos

GOP = "keyint=12:min-keyint=12:scenecut=0"
CASES: dict[str, dict] = {
    "h264_bframes.mp4": {"codec": "libx264", "options": {"x264-params": GOP}},
    "h264_open_gop.mkv": {"codec": "libx264", "options": {"x264-params": f"{GOP}:open-gop=1"}},
    "h264_open_gop.ts": {"codec": "libx264", "options": {"x264-params": f"{GOP}:open-gop=1"}},
    "h264_vfr.mkv": {"codec": "libx264", "vfr": True, "options": {"x264-params": GOP}},
    "h264_vfr.mp4": {"codec": "libx264", "vfr": True, "options": {"x264-params": GOP}},
    "hevc_open_gop.mp4": {
        "codec": "libx265",
        "options": {"x265-params": f"log-level=error:{GOP}:open-gop=1:bframes=3"},
    },
    "vp9.webm": {"codec": "libvpx-vp9", "options": {"g": "12"}},
    "mpeg2_open_gop.ts": {"codec": "mpeg2video", "options": {"g": "12"}},
    "h264_edit_list.mov": {"codec": "libx264", "start_frame": -5, "options": {"x264-params": GOP}},
}
FRAMES = 150


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("seek")
    return {n: videos.make_video(folder / n, frames=FRAMES, **kw) for n, kw in CASES.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_seeking_returns_the_frames_of_sequential_decoding(made: dict[str, Path], name: str):
    info = probe_video(made[name])
    sparse = [3, 30, 31, 57, 90, 121, info.num_frames - 1]
    planned = clip_plan(info.num_frames, 12).ravel().tolist()
    for wanted in (sparse, planned):
        runs = _seek_runs(info, sorted(set(wanted)), "always")
        assert any(keyframe is not None for keyframe, _ in runs), "no seek was exercised"
        seeked = dict(read_frames(made[name], wanted, info=info, seek="always"))
        plain = dict(read_frames(made[name], wanted, info=info, seek="never"))
        assert sorted(seeked) == sorted(plain) == sorted(set(wanted))
        for index in plain:
            np.testing.assert_array_equal(seeked[index], plain[index], err_msg=f"frame {index}")
    hidden = 5 if "edit_list" in name else 0
    assert videos.frame_number(seeked[planned[-1]]) == planned[-1] + hidden


def test_auto_seeks_only_when_it_skips_enough_frames(made: dict[str, Path]) -> None:
    info = probe_video(made["h264_bframes.mp4"])
    assert info.keyframe_pts is not None and len(info.keyframe_pts) == 13  # every 12 frames
    near = SEEK_MIN_SKIP // 2
    runs = _seek_runs(info, [2, near, 120, 121], "auto")
    assert runs == [(None, [2, near]), (120, [120, 121])]
    assert _seek_runs(info, [2, 120], "never") == [(None, [2, 120])]


def test_no_seeking_without_a_trusted_index(tmp_path: Path) -> None:
    raw = videos.make_video(tmp_path / "stream.h264", frames=60, options={"x264-params": GOP})
    info = probe_video(raw)
    assert info.count_method == "decode" and info.keyframe_pts is None
    assert _seek_runs(info, [5, 50], "always") == [(None, [5, 50])]
    got = [(i, videos.frame_number(rgb)) for i, rgb in read_frames(raw, [5, 50], info=info)]
    assert got == [(5, 5), (50, 50)]


def test_seek_mode_is_checked(made: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="seek must be"):
        read_frames(made["vp9.webm"], [1], seek="sometimes")
