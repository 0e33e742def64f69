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
