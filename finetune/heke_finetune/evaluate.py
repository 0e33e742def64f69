"""Completely blind evaluation: each head, and their mean, against a dataset list's scores.

No training: the authors' first result. The heads predict DMOS-like values (higher = more
distorted), so they are compared with the list's targets on the same footing: normalised to
``1 + 8.5*(s - min)/(max - min)`` and, for MOS lists, reversed (``10.5 - s``). A good head
therefore has a *positive* SROCC here, whichever way the list's scores run. (The authors print
the SROCC against the normalised score without reversal, negative on MOS datasets.)
Scores come from a features file (heads per snippet) or from ``heke-run`` results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heke_finetune.datasets import SCALE_NOTE, DatasetList, Direction
from heke_finetune.features import FeatureSet, align_to_list, match_to_list
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


__all__ = [
    "BlindReport",
    "EvaluationError",
    "blind_from_features",
    "blind_from_results",
    "score_metrics",
]
