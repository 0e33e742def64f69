"""Completely blind evaluation: each head, and their mean, against a dataset list's scores.

No training: the authors' first result. The heads predict DMOS-like values (higher = more
distorted), so they are compared with the list's targets on the same footing: normalised to
``1 + 8.5*(s - min)/(max - min)`` and, for MOS lists, reversed (``10.5 - s``). A good head
therefore has a *positive* SROCC here, whichever way the list's scores run. (The authors print
the SROCC against the normalised score without reversal, negative on MOS datasets.)
Scores come from a features file (heads per snippet) or from ``heke-run`` results.

:func:`fr_agreement` is the paper's knowledge-agreement table on your own content: each blind
head against the FR metric it imitates (``heke-fr`` records of the same videos). Both sides
are oriented higher = worse (MS-SSIM as ``1 - MS-SSIM``), so agreement is a positive SROCC.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heke_finetune.datasets import SCALE_NOTE, DatasetList, Direction
from heke_finetune.features import FeatureSet, align_to_list, match_to_list
from heke_finetune.fr.pairs import DIRECTION, LABELS, METRICS
from heke_finetune.metrics import Metrics, evaluate
from heke_runtime.errors import HekeError
from heke_runtime.results import DEMO_NOTE, REGRESSOR_NAME, VideoResult
from heke_runtime.scores import BLIND_NAMES


class EvaluationError(HekeError, ValueError):
    """Scores cannot be evaluated against the list (missing, failed or mismatched videos)."""


@dataclass(frozen=True)
class BlindReport:
    """Metrics per score (``gmsd`` ... ``ensemble``, and ``regressor`` when present)."""

    dataset: str
    direction: Direction
    count: int
    metrics: dict[str, Metrics]
    source: str
    demo_weights: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "dataset": self.dataset,
            "direction": self.direction,
            "targets": SCALE_NOTE,
            "count": self.count,
            "source": self.source,
            "demo_weights": self.demo_weights,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "notes": list(self.notes),
        }
        if self.demo_weights:
            data["note"] = DEMO_NOTE
        return data

    def table(self) -> str:
        lines = [
            f"blind evaluation on {self.dataset} ({self.count} videos, list scores are "
            f"{self.direction.upper()}; targets: {SCALE_NOTE})",
            f"{'score':10} {'SROCC':>8} {'KROCC':>8} {'PLCC':>8} {'RMSE':>8}",
        ]
        for name, m in self.metrics.items():
            lines.append(f"{name:10} {m.srocc:8.4f} {m.krocc:8.4f} {m.plcc:8.4f} {m.rmse:8.4f}")
        lines.extend(f"note: {n}" for n in self.notes)
        if self.demo_weights:
            lines.append(f"NOTE: {DEMO_NOTE}")
        return "\n".join(lines)


def score_metrics(scores: Mapping[str, np.ndarray], targets: np.ndarray) -> dict[str, Metrics]:
    """Metrics of each named score vector against ``targets``."""
    return {name: evaluate(values, targets) for name, values in scores.items()}


def blind_from_features(
    data: FeatureSet, dataset: DatasetList, *, direction: str = "auto", source: str = "features"
) -> BlindReport:
    """Evaluate the heads stored in a features file against the list (matched by path)."""
    aligned = align_to_list(data, dataset, source=source)
    resolved = dataset.direction(direction)
    return BlindReport(
        dataset.name,
        resolved,
        len(dataset),
        score_metrics(aligned.blind_scores(), dataset.targets(resolved)),
        source,
        aligned.demo_weights,
    )


def blind_from_results(
    results: Sequence[VideoResult],
    dataset: DatasetList,
    *,
    direction: str = "auto",
    source: str = "results",
) -> BlindReport:
    """Evaluate ``heke-run`` results (each head, ensemble, regressor if scored) against the list."""
    rows = match_to_list([r.path for r in results], dataset, source=source)
    chosen = [results[i] for i in rows]
    failed = [(r.path, r.error) for r in chosen if not r.ok]
    if failed:
        raise EvaluationError(
            f"{source}: {len(failed)} listed videos failed to score (first: {failed[0][0]}: "
            f"{failed[0][1]}); rescore them first"
        )
    names = [n for n in (*BLIND_NAMES, REGRESSOR_NAME) if all(n in r.scores for r in chosen)]
    scores = {n: np.array([r.scores[n] for r in chosen], dtype=np.float64) for n in names}
    resolved = dataset.direction(direction)
    notes: tuple[str, ...] = ()
    if REGRESSOR_NAME in names:
        notes = ("'regressor' is a fitted score: blind only if it was not fitted on this list",)
    return BlindReport(
        dataset.name,
        resolved,
        len(dataset),
        score_metrics(scores, dataset.targets(resolved)),
        source,
        any(r.demo_weights for r in chosen),
        notes,
    )


# --------------------------------------------------------------------------- FR agreement

MIN_AGREEMENT_VIDEOS = 3  # fewer and rank correlations say nothing


@dataclass(frozen=True)
class BlindScores:
    """Per-video blind scores (``scores[head][i]`` for ``paths[i]``) and where they came from."""

    paths: tuple[str, ...]
    scores: dict[str, np.ndarray]
    source: str
    demo_weights: bool = False

    @classmethod
    def of_features(cls, data: FeatureSet, source: str) -> BlindScores:
        return cls(data.paths, data.blind_scores(), source, data.demo_weights)

    @classmethod
    def of_results(cls, results: Sequence[VideoResult], source: str) -> BlindScores:
        """The videos scored; failed ones have no score to compare."""
        scored = [r for r in results if r.ok]
        scores = {n: np.array([r.scores[n] for r in scored]) for n in BLIND_NAMES}
        paths = tuple(r.path for r in scored)
        return cls(paths, scores, source, any(r.demo_weights for r in scored))


@dataclass(frozen=True)
class AgreementReport:
    """Per head: its metrics against its FR metric (None: too few videos with both)."""

    count: int
    metrics: dict[str, Metrics | None]
    source: str
    fr_source: str
    demo_weights: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "source": self.source,
            "fr_source": self.fr_source,
            "orientation": "both higher = worse (MS-SSIM as 1 - MS-SSIM)",
            "demo_weights": self.demo_weights,
            "metrics": {k: v.to_dict() if v else None for k, v in self.metrics.items()},
            "notes": list(self.notes),
        }

    def table(self) -> str:
        lines = [
            f"knowledge agreement: each blind head vs the FR metric it imitates "
            f"({self.count} videos; {self.source} vs {self.fr_source}; both oriented "
            "higher = worse)",
            f"{'head':10} {'FR metric':10} {'videos':>6} {'SROCC':>8} {'KROCC':>8} {'PLCC':>8}",
        ]
        for name, m in self.metrics.items():
            label = LABELS[name]
            if m is None:
                lines.append(f"{name:10} {label:10} {'-':>6} {'n/a':>8} {'n/a':>8} {'n/a':>8}")
            else:
                lines.append(
                    f"{name:10} {label:10} {m.count:6d} {m.srocc:8.4f} {m.krocc:8.4f} {m.plcc:8.4f}"
                )
        lines.extend(f"note: {n}" for n in self.notes)
        if self.demo_weights:
            lines.append(f"NOTE: {DEMO_NOTE}")
        return "\n".join(lines)


def _worse_up(metric: str, value: float) -> float:
    return 1.0 - value if DIRECTION[metric] == "higher-is-better" else value


class _PathIndex:
    """Find a video among ``paths``: same absolute path, same path relative to the FR
    records' folder, or failing both the only one with that file name."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.exact = {os.path.abspath(p): i for i, p in enumerate(paths)}
        self.by_name: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(paths):
            self.by_name[os.path.basename(p)].append(i)

    def find(self, path: str, fr_folder: str) -> int | None:
        for candidate in (os.path.abspath(path), os.path.abspath(os.path.join(fr_folder, path))):
            if candidate in self.exact:
                return self.exact[candidate]
        named = self.by_name.get(os.path.basename(path), [])
        return named[0] if len(named) == 1 else None


def fr_agreement(
    blind: BlindScores,
    fr_records: Sequence[Mapping[str, Any]],
    *,
    fr_source: str,
    fr_folder: str = ".",
) -> AgreementReport:
    """Each head's blind score against its FR metric in the records of the same videos
    (matched by the distorted path)."""
    index = _PathIndex(blind.paths)
    pairs: dict[str, list[tuple[float, float]]] = {m: [] for m in METRICS}
    unmatched = failed = 0
    for record in fr_records:
        if record.get("status") != "ok":
            failed += 1
            continue
        row = index.find(str(record["dist"]), fr_folder)
        if row is None:
            unmatched += 1
            continue
        for metric in METRICS:
            value = _fr_value(record, metric)
            if value is not None:
                pairs[metric].append((float(blind.scores[metric][row]), _worse_up(metric, value)))
    metrics = {m: _agreement(pairs[m]) for m in METRICS}
    notes = _agreement_notes(failed, unmatched, metrics, fr_source)
    count = max(len(v) for v in pairs.values())
    return AgreementReport(count, metrics, blind.source, fr_source, blind.demo_weights, notes)


def _fr_value(record: Mapping[str, Any], metric: str) -> float | None:
    """The pooled value from a JSON lines record (``scores``) or a CSV row (a column)."""
    scores = record.get("scores")
    value = scores.get(metric) if isinstance(scores, Mapping) else record.get(metric)
    return None if value in (None, "") else float(value)


def _agreement(pairs: list[tuple[float, float]]) -> Metrics | None:
    if len(pairs) < MIN_AGREEMENT_VIDEOS:
        return None
    head, fr = (np.array(side, dtype=np.float64) for side in zip(*pairs))
    return evaluate(head, fr)


def _agreement_notes(
    failed: int, unmatched: int, metrics: Mapping[str, Metrics | None], fr_source: str
) -> tuple[str, ...]:
    notes = []
    if failed:
        notes.append(f"{failed} failed pair(s) in {fr_source} left out")
    if unmatched:
        notes.append(f"{unmatched} pair(s) in {fr_source} have no blind score; left out")
    for name, m in metrics.items():
        if m is None:
            notes.append(
                f"{name}: fewer than {MIN_AGREEMENT_VIDEOS} videos with both scores "
                f"(an FR value is missing where heke-fr could not compute it)"
            )
    return tuple(notes)


__all__ = [
    "AgreementReport",
    "BlindReport",
    "BlindScores",
    "EvaluationError",
    "blind_from_features",
    "blind_from_results",
    "fr_agreement",
    "score_metrics",
]
