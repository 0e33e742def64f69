"""SROCC, KROCC, PLCC and RMSE: the numbers the authors report, from ``scipy.stats``.

The authors report ``stats.spearmanr``, ``stats.kendalltau`` (tau-b, ties handled),
``stats.pearsonr`` and the root mean squared error of the raw predictions (no logistic
fitting); these are those functions, behind one check of the inputs. A correlation with a
constant input is undefined: NaN, as scipy says. scipy comes with ``heke[finetune]``; without
it the error says so (imported on first use, so reading features needs no scipy).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

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


def _stats() -> ModuleType:
    try:
        from scipy import stats
    except ImportError:
        raise MetricsError("metrics need scipy: pip install 'heke[finetune]'") from None
    return stats


def _statistic(result: Any) -> float:
    """A correlation's value (NaN for a constant input)."""
    return float(result[0])


def plcc(pred: np.ndarray, label: np.ndarray) -> float:
    """Pearson's linear correlation (``scipy.stats.pearsonr``)."""
    x, y = _pair(pred, label)
    with _constant_input_ok():
        return _statistic(_stats().pearsonr(x, y))


def srocc(pred: np.ndarray, label: np.ndarray) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``)."""
    x, y = _pair(pred, label)
    with _constant_input_ok():
        return _statistic(_stats().spearmanr(x, y))


def krocc(pred: np.ndarray, label: np.ndarray) -> float:
    """Kendall's tau-b (``scipy.stats.kendalltau``)."""
    x, y = _pair(pred, label)
    with _constant_input_ok():
        return _statistic(_stats().kendalltau(x, y))


@contextlib.contextmanager
def _constant_input_ok() -> Iterator[None]:
    """scipy warns on a constant input and returns NaN; NaN is our documented answer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*constant.*", category=RuntimeWarning)
        yield


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
    "rmse",
    "srocc",
]
