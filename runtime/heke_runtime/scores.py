"""The blind-score rule, in one place (docs/ARCHITECTURE.md).

A head's video score is its mean over the video's snippets; the ensemble is the mean of the
four heads. The scorer, the features files, blind evaluation and ``heke-export --verify`` all
call :func:`blind_scores`, so the rule cannot drift between them.
"""

from __future__ import annotations

import numpy as np

from heke_runtime.models import HEAD_NAMES

ENSEMBLE = "ensemble"
BLIND_NAMES: tuple[str, ...] = (*HEAD_NAMES, ENSEMBLE)


def snippet_scores(heads: np.ndarray) -> dict[str, np.ndarray]:
    """Per snippet: each head, and the ensemble (the snippet's mean of the four heads).

    ``heads`` is ``[..., T, 4]``; every value is float64 ``[..., T]``.
    """
    values = np.asarray(heads, dtype=np.float64)
    columns = {name: values[..., i] for i, name in enumerate(HEAD_NAMES)}
    columns[ENSEMBLE] = values.mean(axis=-1)
    return columns


def blind_scores(heads: np.ndarray) -> dict[str, np.ndarray]:
    """The blind video scores: each head's mean over snippets, and the ensemble.

    ``heads`` is ``[..., T, 4]`` (one video's snippets, or ``[V, T, 4]`` for many videos);
    every value is float64 ``[...]`` (a 0-d array for one video).
    """
    per_head = np.asarray(heads, dtype=np.float64).mean(axis=-2)
    scores = {name: per_head[..., i] for i, name in enumerate(HEAD_NAMES)}
    scores[ENSEMBLE] = per_head.mean(axis=-1)
    return scores


# --- other poolings (heke-run --pool) ---------------------------------------------------------

MEAN = "mean"
POOLS_HELP = (
    "mean (the blind score the authors defined), harmonic, min, max, median, or pN, the N-th "
    "percentile (p5, p95; linear interpolation). Heads run higher = more distorted, so max and "
    "p95 are the worst snippets."
)
_NAMED_POOLS = ("mean", "harmonic", "min", "max", "median")


def parse_pools(text: str) -> tuple[str, ...]:
    """``"mean,p95"`` -> ``("mean", "p95")``; ``ValueError`` naming what is not a pooling."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if not _known_pool(n)]
    if bad or not names:
        raise ValueError(
            f"--pool {text!r}: {', '.join(bad) or 'nothing'} is not one of {POOLS_HELP}"
        )
    return names


def _known_pool(name: str) -> bool:
    if name in _NAMED_POOLS:
        return True
    return name[:1] == "p" and name[1:].isdigit() and 0 <= int(name[1:]) <= 100


def pool(values: np.ndarray, how: str) -> float | None:
    """One pooled value of a video's per-snippet scores; None where ``how`` is undefined (the
    harmonic mean of scores that are not all positive)."""
    data = np.asarray(values, dtype=np.float64)
    if how == "harmonic":
        return float(data.size / np.sum(1.0 / data)) if np.all(data > 0) else None
    if how in ("mean", "min", "max", "median"):
        return float(getattr(np, how)(data))
    return float(np.percentile(data, int(how[1:])))
