"""Raw ``.yuv`` inputs beyond 8-bit 4:2:0 (``--pix-fmt``): each format, written as ffmpeg's
rawvideo muxer writes it, scores exactly like the same frames in a lossless container."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from heke_runtime.cli import main
from heke_runtime.decode import probe_video, read_frames, read_luma
from heke_runtime.results import read_records
from heke_runtime.yuv import RawSize
from tests.test_backends import tiny_engine
from tests.videos import make_video

FORMATS = ("yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv444p10le", "gray")


def _rawvideo(video: Path, out: Path) -> Path:
    """The frames as ffmpeg's rawvideo writes them: planes back to back, rows unpadded."""
    with av.open(str(video)) as container, out.open("wb") as handle:
        for frame in container.decode(video=0):
            fmt = frame.format
            for plane, component in zip(frame.planes, fmt.components):
                row_bytes = component.width * (1 if component.bits <= 8 else 2)
                rows = np.frombuffer(memoryview(plane), np.uint8).reshape(component.height, -1)
                handle.write(rows[:, :row_bytes].tobytes())
    return out


@pytest.fixture(scope="module")
def engine():
    return str(tiny_engine("r2p1d_HEKE_4"))


@pytest.mark.parametrize("pix_fmt", FORMATS)
def test_a_raw_file_decodes_as_the_same_frames_in_a_container(tmp_path, pix_fmt):
    lossless = make_video(tmp_path / "clip.mkv", codec="ffv1", pix_fmt=pix_fmt, frames=6)
    raw = _rawvideo(lossless, tmp_path / "clip.yuv")
    info = probe_video(raw, size=RawSize(64, 48, pix_fmt))
    assert (info.num_frames, info.pix_fmt) == (6, pix_fmt)
    container = probe_video(lossless)
    assert container.pix_fmt == pix_fmt  # the encode kept the format under test
    ours = dict(read_frames(raw, range(6), info=info))
    theirs = dict(read_frames(lossless, range(6), info=container))
    for index in range(6):
        np.testing.assert_array_equal(ours[index], theirs[index])
    for a, b in zip(read_luma(info), read_luma(container)):
        np.testing.assert_array_equal(a, b)
    assert len({f.tobytes() for f in ours.values()}) == 6  # six different pictures


@pytest.mark.parametrize("pix_fmt", ["yuv422p", "yuv420p10le"])
def test_heke_run_scores_a_raw_file_like_its_container(tmp_path, capsys, engine, pix_fmt):
    lossless = make_video(tmp_path / "clip.mkv", codec="ffv1", pix_fmt=pix_fmt, frames=30)
    raw = _rawvideo(lossless, tmp_path / "clip.yuv")
    out = tmp_path / "r.jsonl"
    args = [raw, lossless, "-e", engine, "-o", out, "--size", "64x48", "--pix-fmt", pix_fmt]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    got, want = read_records(out)
    assert got["video"]["pix_fmt"] == pix_fmt and got["video"]["num_frames"] == 30
    assert got["snippets"] == want["snippets"]


def test_a_size_that_is_not_whole_frames_names_the_format(tmp_path, capsys, engine):
    raw = tmp_path / "clip.yuv"
    raw.write_bytes(bytes(64 * 48 * 3 * 2 + 100))  # two yuv444p frames and a bit
    out = tmp_path / "r.jsonl"
    args = [raw, "-e", engine, "-o", out, "--size", "64x48", "--pix-fmt", "yuv444p"]
    assert main([str(a) for a in args]) == 1
    (record,) = read_records(out)
    reason = (
        "18532 bytes is not a whole number of 64x48 yuv444p frames (9216 bytes each); "
        "check --size and --pix-fmt"
    )
    assert record["error"] == reason and record["path"] == str(raw)
    assert f"heke-run: FAILED {raw}: {reason}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("pix_fmt", "message"),
    [
        ("yuv999p", "--pix-fmt yuv999p: not a pixel format FFmpeg knows"),
        ("nv12", "--pix-fmt nv12: heke reads raw planar formats only"),
        ("rgb24", "--pix-fmt rgb24: heke reads raw planar formats only"),
    ],
)
def test_formats_heke_cannot_read_raw_are_usage_errors(tmp_path, capsys, engine, pix_fmt, message):
    raw = tmp_path / "clip.yuv"
    raw.write_bytes(bytes(64 * 48 * 3))
    code = main([str(raw), "-e", engine, "--size", "64x48", "--pix-fmt", pix_fmt])
    assert code == 2 and message in capsys.readouterr().err


def test_heke_fr_reads_a_raw_format_like_its_container(tmp_path):
    from heke_finetune.fr.cli import main as fr_main

    size = (96, 64)  # ST-RRED's pyramid needs 49 px
    ref = make_video(tmp_path / "ref.mkv", codec="ffv1", pix_fmt="yuv444p", frames=6, size=size)
    dist = make_video(tmp_path / "dist.mp4", codec="mpeg4", frames=6, bframes=False, size=size)
    raw = _rawvideo(ref, tmp_path / "ref.yuv")
    args = ["--size", "96x64", "--pix-fmt", "yuv444p"]
    assert fr_main([str(raw), str(dist), "-o", str(tmp_path / "raw.jsonl"), *args]) == 0
    assert fr_main([str(ref), str(dist), "-o", str(tmp_path / "mkv.jsonl")]) == 0
    (from_raw,) = [json.loads(x) for x in (tmp_path / "raw.jsonl").read_text().splitlines()]
    (from_mkv,) = [json.loads(x) for x in (tmp_path / "mkv.jsonl").read_text().splitlines()]
    assert from_raw["series"] == from_mkv["series"] and from_raw["series"]["st_rred"]
