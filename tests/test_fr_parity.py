"""heke-fr's metrics against the authors' MATLAB code, run for real under GNU Octave.

tests/data/fr/expected.json holds every per-frame value their code gave on the pairs of
tests/fr_pairs.py (made by scripts/fr_reference.py; README, "FR metrics"). Here the same pairs
go through ``score_pair`` from real files: the reference crop written as raw yuv420p (exact),
the distorted clip decoded by PyAV.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from heke_finetune.fr.pairs import METRICS, FrResult, score_pair
from heke_runtime.tolerances import FR_PER_FRAME
from tests.fr_pairs import EXPECTED, PAIRS, Pair, reference_yuv

pytest.importorskip("pyrtools", reason="heke-fr needs pyrtools (pip install heke[fr])")
EXPECTED_PAIRS = json.loads(EXPECTED.read_text())["pairs"]
AUTHORS_NAME = {"gmsd": "gmsd", "st_gmsd": "stgmsd", "st_rred": "strred", "ms_ssim": "msssim"}


def _reference_file(pair: Pair, folder: Path) -> Path:
    path = folder / f"{pair.name}.yuv"
    with path.open("wb") as out:
        for flat in reference_yuv(pair):
            out.write(flat.tobytes())
    return path


def _scored(pair: Pair, folder: Path) -> FrResult:
    return score_pair(_reference_file(pair, folder), pair.dist_file, size=pair.size)


def _theirs(pair: Pair, metric: str) -> np.ndarray:
    values = EXPECTED_PAIRS[pair.name][AUTHORS_NAME[metric]]  # stored as their code names it
    return np.array([np.nan if v is None else v for v in values])


def test_the_stored_values_cover_every_pair_and_metric() -> None:
    for pair in PAIRS:
        stored = EXPECTED_PAIRS[pair.name]
        assert stored["frames"] == pair.frames
        assert (stored["width"], stored["height"]) == pair.size
        assert {"gmsd", "stgmsd", "strred", "msssim"} <= stored.keys()


@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_every_per_frame_value_matches_the_authors_code(pair: Pair, tmp_path: Path) -> None:
    result = _scored(pair, tmp_path)
    assert result.frames == pair.frames
    for metric in METRICS:
        theirs = _theirs(pair, metric)
        ours = np.array(result.series[metric])
        if np.isnan(theirs).all():  # their MS-SSIM at 176x144: we say so instead
            assert ours.size == 0 and result.scores[metric] is None
            assert any(w.startswith("MS-SSIM not computed") for w in result.warnings)
            continue
        assert ours.shape == theirs.shape, metric
        np.testing.assert_allclose(
            ours,
            theirs,
            rtol=FR_PER_FRAME.rtol,
            atol=FR_PER_FRAME.atol,
            err_msg=f"{pair.name} {metric}",
        )
        assert result.scores[metric] == pytest.approx(float(theirs.mean()), rel=FR_PER_FRAME.rtol)


def test_series_lengths_follow_the_authors_framing(tmp_path: Path) -> None:
    pair = next(p for p in PAIRS if p.name == "bbb-h264")
    result = _scored(pair, tmp_path)
    n = pair.frames
    lengths = {metric: len(values) for metric, values in result.series.items()}
    assert lengths == {"gmsd": n, "st_gmsd": n - 2, "st_rred": n // 2, "ms_ssim": n}


def test_the_stored_values_tell_the_pairs_apart() -> None:
    """The parity data would catch a metric that ignores its input: per-frame values vary
    within a video and the pooled values differ between pairs by far more than the bar."""
    for metric in ("gmsd", "st_gmsd", "st_rred"):
        means = [float(np.nanmean(_theirs(p, metric))) for p in PAIRS]
        assert min(abs(a - b) / max(a, b) for a, b in _pairs_of(means)) > 1e-3, metric
        assert all(np.nanstd(_theirs(p, metric)) > 0 for p in PAIRS), metric


def _pairs_of(values: list[float]) -> list[tuple[float, float]]:
    return [(a, b) for i, a in enumerate(values) for b in values[i + 1 :]]


def test_identical_videos_score_perfectly(tmp_path: Path) -> None:
    pair = next(p for p in PAIRS if p.name == "bikes-mpeg4")
    ref = _reference_file(pair, tmp_path)
    result = score_pair(ref, ref, size=pair.size)
    assert result.scores["gmsd"] == 0.0 and result.scores["st_gmsd"] == 0.0
    assert result.scores["st_rred"] == 0.0
    assert result.scores["ms_ssim"] == pytest.approx(1.0, abs=1e-12)
    assert not any(math.isnan(v) for values in result.series.values() for v in values)


def test_threads_do_not_change_a_value(tmp_path: Path) -> None:
    pair = next(p for p in PAIRS if p.name == "bbb-mpeg2")
    ref = _reference_file(pair, tmp_path)
    one = score_pair(ref, pair.dist_file, size=pair.size, threads=1)
    three = score_pair(ref, pair.dist_file, size=pair.size, threads=3)
    assert one.series == three.series and one.series["st_rred"] and one.series["ms_ssim"]
