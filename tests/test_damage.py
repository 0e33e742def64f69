"""``on_damage``: damaged real encodes fail by default and are scored, with a counted warning,
when concealed (``heke-run --on-damage conceal``)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import av
import pytest

from heke_runtime.cli import main
from heke_runtime.decode import DamageWarning, VideoDecodeError, probe_video
from heke_runtime.results import read_records
from heke_runtime.scorer import Scorer
from tests.test_backends import tiny_engine
from tests.videos import corrupt_file, make_video

# 50 random bytes mid-file: FFmpeg conceals the frame (flags it, keeps it). 2000 bytes: the
# decoder also rejects packets, so frames are lost and the demuxed index no longer holds.
CASES = {
    "h264 concealed": ("libx264", 50),
    "mpeg4 concealed": ("mpeg4", 50),
    "h264 frames lost": ("libx264", 2000),
}


def damaged(folder: Path, codec: str, length: int) -> Path:
    clean = make_video(folder / f"clean_{codec}.mp4", codec=codec, frames=100)
    return corrupt_file(clean, folder / f"bad_{codec}_{length}.mp4", length=length)


def ffmpeg_count(path: Path) -> tuple[int, int, int | None, int]:
    """(frames flagged corrupt, frames decoded, first flagged frame, packets rejected),
    decoding single-threaded with plain PyAV."""
    corrupt = frames = rejected = 0
    first = None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                rejected += 1
                continue
            for frame in decoded:
                if frame.is_corrupt:
                    corrupt += 1
                    first = frames if first is None else first
                frames += 1
    return corrupt, frames, first, rejected


@pytest.mark.parametrize("case", CASES)
def test_conceal_scores_and_counts_what_ffmpeg_flags(tmp_path, case):
    codec, length = CASES[case]
    bad = damaged(tmp_path, codec, length)
    corrupt, frames, first, rejected = ffmpeg_count(bad)
    assert corrupt >= 1  # the damage is one FFmpeg conceals, not only drops
    engine = tiny_engine("r2p1d_HEKE_4")
    with Scorer(engine, workers=0) as scorer:
        failed = scorer.score(bad)
    assert not failed.ok and "damaged video data at frame" in (failed.error or "")
    assert "\n" not in (failed.error or "")
    with Scorer(engine, workers=0, on_damage="conceal") as scorer:
        result = scorer.score(bad)
    assert result.ok, result.error
    notes = [w for w in result.warnings if "concealed damage" in w]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert f"concealed damage: {corrupt} of {frames} decoded frames had errors" in notes[0]
    assert result.video is not None and result.video.num_frames == frames
    if rejected:
        assert f"{rejected} packets the decoder rejected" in notes[0]
    else:
        assert f"(first at frame {first}, " in notes[0]


def test_probe_warns_once_and_counts_by_decoding(tmp_path):
    bad = damaged(tmp_path, "libx264", 50)
    with pytest.raises(VideoDecodeError, match="damaged video data"):
        probe_video(bad, count="decode")
    with pytest.warns(DamageWarning, match=r"1 of 100 decoded frames had errors") as caught:
        info = probe_video(bad, count="decode", on_damage="conceal")
    assert len(caught) == 1 and info.num_frames == 100
    with pytest.raises(ValueError, match="on_damage must be 'fail' or 'conceal'"):
        probe_video(bad, on_damage="skip")  # type: ignore[arg-type]


def test_undamaged_videos_get_no_warning_in_either_mode(tmp_path):
    clean = make_video(tmp_path / "clean.mp4", codec="libx264", frames=60)
    engine = tiny_engine("r2p1d_HEKE_4")
    for mode in ("fail", "conceal"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DamageWarning)
            with Scorer(engine, workers=0, on_damage=mode) as scorer:
                result = scorer.score(clean)
        assert result.ok and not any("damage" in w for w in result.warnings)


def test_heke_run_on_damage(tmp_path, capsys):
    bad = damaged(tmp_path, "libx264", 50)
    clean = make_video(tmp_path / "clean.mp4", frames=30)
    engine = tiny_engine("r2p1d_HEKE_4")
    out = tmp_path / "fail.jsonl"
    assert main([str(bad), str(clean), "-e", str(engine), "-o", str(out)]) == 1
    records = read_records(out)
    assert [r["status"] for r in records] == ["error", "ok"]
    first = ffmpeg_count(bad)[2]
    assert re.search(
        rf"damaged video data at frame {first} .*frame decoded with errors", records[0]["error"]
    )
    capsys.readouterr()
    out = tmp_path / "conceal.jsonl"
    args = [str(bad), str(clean), "-e", str(engine), "-o", str(out), "--on-damage", "conceal"]
    assert main(args) == 0
    records = read_records(out)
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert any("concealed damage: 1 of 100" in w for w in records[0]["warnings"])
    assert not any("damage" in w for w in records[1]["warnings"])
    capsys.readouterr()
    assert main([str(clean), "-e", str(engine), "--on-damage", "skip"]) == 2
    assert "--on-damage must be 'fail' or 'conceal', got 'skip'" in capsys.readouterr().err
