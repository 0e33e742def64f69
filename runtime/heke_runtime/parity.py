"""One parity helper for tests and ``heke-export --verify`` (Polygraphy-style report).

A comparison passes when, for every output, each element is within ``atol`` absolutely or
within ``rtol`` relatively (``|a-b| <= atol + rtol*|b|``, as ``numpy.isclose``). NaN or Inf in
either array fails. The report gives max/mean/p99 absolute and relative error and the smallest
``atol`` that would pass at the given ``rtol``, then one greppable ``PASSED | ...`` line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from heke_runtime.tolerances import Tolerance


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    min_atol: float
    finite: bool
    passed: bool

    def line(self) -> str:
        status = "ok" if self.passed else "MISMATCH"
        finite = "" if self.finite else " NaN/Inf!"
        return (
            f"  {self.name}: max_abs={self.max_abs:.3g} mean_abs={self.mean_abs:.3g} "
            f"p99_abs={self.p99_abs:.3g} max_rel={self.max_rel:.3g} "
            f"mean_rel={self.mean_rel:.3g} min_atol={self.min_atol:.3g} {status}{finite}"
        )


@dataclass(frozen=True)
class ParityResult:
    label: str
    tolerance: Tolerance
    outputs: list[OutputDiff] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        worst = max((o.max_abs for o in self.outputs), default=0.0)
        return (
            f"{verdict} | {self.label} | atol={self.tolerance.atol:g} "
            f"rtol={self.tolerance.rtol:g} | worst max_abs={worst:.3g}"
        )

    def report(self) -> str:
        return "\n".join([*(o.line() for o in self.outputs), self.summary()])

    def __str__(self) -> str:
        return self.summary()


def compare_output(
    name: str, actual: np.ndarray, expected: np.ndarray, tol: Tolerance
) -> OutputDiff:
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{name}: shape {a.shape} != expected {b.shape}")
    finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
    diff = np.abs(a - b)
    scale = np.maximum(np.abs(b), np.finfo(np.float64).eps)
    rel = diff / scale
    need = diff - tol.rtol * np.abs(b)
    min_atol = float(max(need.max(initial=0.0), 0.0)) if finite else float("inf")
    passed = finite and bool(np.all(diff <= tol.atol + tol.rtol * np.abs(b)))
    stats = (diff, rel) if diff.size else (np.zeros(1), np.zeros(1))
    return OutputDiff(
        name,
        float(stats[0].max()),
        float(stats[0].mean()),
        float(np.percentile(stats[0], 99)),
        float(stats[1].max()),
        float(stats[1].mean()),
        min_atol,
        finite,
        passed,
    )


def compare(
    label: str,
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    tol: Tolerance,
) -> ParityResult:
    """Compare every output of ``expected`` with the same name in ``actual``."""
    missing = sorted(set(expected) - set(actual))
    if missing:
        raise KeyError(f"{label}: outputs missing from the result: {missing}")
    diffs = [compare_output(name, actual[name], expected[name], tol) for name in expected]
    return ParityResult(label, tol, diffs)
