"""SROCC, KROCC, PLCC and RMSE in NumPy, computed as scipy.stats does (no scipy at run time).

The authors report ``stats.spearmanr``, ``stats.kendalltau`` (tau-b, ties handled),
``stats.pearsonr`` and the root mean squared error of the raw predictions (no logistic
fitting). These functions give the same numbers (to float64 rounding, tested against scipy).
A correlation with a constant input is undefined: like scipy, it is NaN.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from heke_runtime.errors import HekeError


class MetricsError(HekeError, ValueError):
    """Predictions and labels cannot be compared (lengths differ, too few, not finite)."""


@dataclass(frozen=True)
class Metrics:
    """The four numbers the authors report for one set of predictions."""

    srocc: float
    krocc: float
    plcc: float
    rmse: float
    count: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"SROCC={self.srocc:.4f} KROCC={self.krocc:.4f} PLCC={self.plcc:.4f} "
            f"RMSE={self.rmse:.4f} (n={self.count})"
        )


def _pair(pred: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(label, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise MetricsError(f"{x.size} predictions for {y.size} labels")
    if x.size < 2:
        raise MetricsError(f"need at least 2 predictions to correlate, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise MetricsError("predictions or labels hold NaN or Inf")
    return x, y


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (``scipy.stats.rankdata`` 'average')."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start of each run of equal values, and the run each sorted element belongs to.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    runs = np.repeat(np.arange(starts.size), ends - starts)
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = average[runs]
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xm, ym = x - x.mean(), y - y.mean()
    nx, ny = np.linalg.norm(xm), np.linalg.norm(ym)
    if nx == 0.0 or ny == 0.0:
        return math.nan  # constant input: undefined, as scipy
    r = float(np.dot(xm / nx, ym / ny))
    return max(-1.0, min(1.0, r))


def plcc(pred: np.ndarray, label: np.ndarray) -> float:
    """Pearson's linear correlation (``scipy.stats.pearsonr(...)[0]``)."""
    return _pearson(*_pair(pred, label))


def srocc(pred: np.ndarray, label: np.ndarray) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr(...)[0]``)."""
    x, y = _pair(pred, label)
    return _pearson(rankdata(x), rankdata(y))


def _tied_pairs(sorted_values: np.ndarray) -> int:
    """Pairs of equal values in a sorted array."""
    if sorted_values.size == 0:
        return 0
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    counts = np.diff(np.r_[starts, sorted_values.size]).astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _strict_inversions(values: np.ndarray) -> int:
    """Pairs ``i < j`` with ``values[i] > values[j]`` (a Fenwick tree over dense ranks)."""
    _, dense = np.unique(values, return_inverse=True)
    tree = np.zeros(int(dense.max()) + 2, dtype=np.int64)
    inversions = 0
    for seen, rank in enumerate(dense.tolist()):
        # Earlier values <= this one: prefix count up to its rank (1-based).
        i, not_greater = rank + 1, 0
        while i > 0:
            not_greater += int(tree[i])
            i -= i & -i
        inversions += seen - not_greater
        i = rank + 1
        while i < tree.size:
            tree[i] += 1
            i += i & -i
    return inversions


def krocc(pred: np.ndarray, label: np.ndarray) -> float:
    """Kendall's tau-b (``scipy.stats.kendalltau(...)[0]``), O(n log n)."""
    x, y = _pair(pred, label)
    order = np.lexsort((y, x))  # by x, then y: equal-x runs hold no strict y inversions
    xs, ys = x[order], y[order]
    total = x.size * (x.size - 1) // 2
    x_ties = _tied_pairs(xs)
    y_ties = _tied_pairs(np.sort(y))
    both = _tied_pairs_both(xs, ys)
    discordant = _strict_inversions(ys)
    if total in (x_ties, y_ties):
        return math.nan  # one input is constant
    concordant_minus = total - x_ties - y_ties + both - 2 * discordant
    tau = concordant_minus / math.sqrt(total - x_ties) / math.sqrt(total - y_ties)
    return max(-1.0, min(1.0, tau))


def _tied_pairs_both(xs: np.ndarray, ys: np.ndarray) -> int:
    """Pairs equal in both x and y (inputs sorted by x, then y)."""
    if xs.size == 0:
        return 0
    new = np.r_[True, (xs[1:] != xs[:-1]) | (ys[1:] != ys[:-1])]
    counts = np.diff(np.r_[np.flatnonzero(new), xs.size]).astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def rmse(pred: np.ndarray, label: np.ndarray) -> float:
    """Root mean squared error of the raw predictions (upstream: no nonlinear mapping)."""
    x, y = _pair(pred, label)
    return float(np.sqrt(np.mean((x - y) ** 2)))


def evaluate(pred: np.ndarray, label: np.ndarray) -> Metrics:
    """All four metrics of ``pred`` against ``label``."""
    x, y = _pair(pred, label)
    return Metrics(srocc(x, y), krocc(x, y), plcc(x, y), rmse(x, y), int(x.size))


__all__ = [
    "Metrics",
    "MetricsError",
    "evaluate",
    "krocc",
    "plcc",
    "rankdata",
    "rmse",
    "srocc",
]
