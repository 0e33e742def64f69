"""``heke-eval --fr``'s agreement table: orientation, matching and what is left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heke_finetune.evaluate import BlindScores, fr_agreement
from heke_finetune.metrics import srocc

HEADS = ("gmsd", "st_gmsd", "st_rred", "ms_ssim", "ensemble")


def _record(dist: str, scores: dict[str, float | None], status: str = "ok") -> dict:
    return {"ref": "ref.mp4", "dist": dist, "status": status, "scores": scores}


def test_agreement_is_positive_when_a_head_tracks_its_metric_either_way_it_runs(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    worse = rng.uniform(0, 1, 8)  # how distorted each video is
    paths = tuple(str(tmp_path / f"v{i}.mp4") for i in range(8))
    blind = BlindScores(paths, {h: 1 + 8 * worse for h in HEADS}, "heads")
    records = [
        _record(f"v{i}.mp4", {"gmsd": w, "st_gmsd": w**2, "st_rred": 100 * w, "ms_ssim": 1 - w})
        for i, w in enumerate(worse)
    ]  # relative to the records' folder, as heke-make-synthetic writes them
    report = fr_agreement(blind, records, fr_source="fr.jsonl", fr_folder=str(tmp_path))
    assert report.count == 8 and not report.notes
    for metric in ("gmsd", "st_gmsd", "st_rred", "ms_ssim"):
        assert report.metrics[metric] is not None
        assert report.metrics[metric].srocc == pytest.approx(1.0)  # MS-SSIM oriented too


def test_failed_unmatched_and_missing_values_are_left_out_and_said(tmp_path: Path) -> None:
    paths = tuple(str(tmp_path / f"v{i}.mp4") for i in range(5))
    heads = {h: np.array([5.0, 1.0, 4.0, 2.0, 3.0]) for h in HEADS}
    fr_values = [0.9, 0.2, 0.5, 0.3, 0.1]
    records = [
        _record(p, {"gmsd": v, "st_gmsd": v, "st_rred": v, "ms_ssim": None})
        for p, v in zip(paths, fr_values)
    ]
    records.append(_record("elsewhere/other.mp4", {"gmsd": 1.0}))
    records.append(_record(paths[0], {}, status="error"))
    report = fr_agreement(BlindScores(paths, heads, "heads"), records, fr_source="fr.jsonl")
    assert report.metrics["ms_ssim"] is None
    gmsd = report.metrics["gmsd"]
    assert gmsd is not None and gmsd.count == 5
    assert gmsd.srocc == pytest.approx(srocc(heads["gmsd"], np.array(fr_values)))
    assert report.notes[:2] == (
        "1 failed pair(s) in fr.jsonl left out",
        "1 pair(s) in fr.jsonl have no blind score; left out",
    )
    assert "ms_ssim: fewer than 3 videos with both scores" in report.notes[2]
    assert "ms_ssim" in report.table() and "n/a" in report.table()
