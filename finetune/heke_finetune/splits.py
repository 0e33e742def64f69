"""Content-wise train/test splits as the authors enumerate them, plus a validation part.

Authors (``get_combinations`` in ``demo_finetune_VQA.py``): 20% of the reference contents are
held out for testing (``round(0.2*n)``; Python's rounding). For LIVE (10 references), CSIQ
(12), IVPL (10), EPFL-PoliMI (12) and LIVE-Mobile (10) every pair of references is a test set,
in ``itertools.combinations`` order; for IVC-IC (60 references) 50 fixed 12-reference sets.
They index contents by the list's ``ref_id`` (0..n-1); heke indexes them by position among
the list's distinct contents, which is the same thing for the authors' lists.

heke adds a *validation* part: ``round(0.2*n_train)`` (at least one) of the training contents,
drawn with the seed, on which the training epoch is chosen (see ``heke_finetune.train``).
Other lists get every ``round(0.2*n)``-subset when there are at most ``ALL_SPLITS_LIMIT``,
else ``DEFAULT_RANDOM_SPLITS`` distinct random ones (seeded).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from heke_finetune.datasets import PRESETS
from heke_runtime.errors import HekeError

TEST_FRACTION = 0.2
ALL_SPLITS_LIMIT = 1000
DEFAULT_RANDOM_SPLITS = 100


class SplitError(HekeError, ValueError):
    """The contents cannot be split as asked."""


@dataclass(frozen=True)
class Split:
    """Content positions (into the list's distinct contents) of each part."""

    index: int
    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]

    def rows(self, content_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Video rows of ``(train, validation, test)`` given each video's content position."""
        return tuple(  # type: ignore[return-value]
            np.flatnonzero(np.isin(content_index, part))
            for part in (self.train, self.validation, self.test)
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "train": list(self.train),
            "validation": list(self.validation),
            "test": list(self.test),
        }


def held_out(count: int) -> int:
    """The authors' ``round(0.2*n)`` (Python rounding, as in their code)."""
    return round(count * TEST_FRACTION)


def ivc_ic_test_sets() -> list[tuple[int, ...]]:
    """The authors' 50 fixed 12-reference test sets for IVC-IC (60 references)."""
    sets = [range(i, i + 12) for i in range(0, 49, 3)]
    sets += [range(i, i + 24, 2) for i in range(0, 37, 3)]
    sets += [range(i + 1, i + 36, 3) for i in range(2, 25, 2)]
    sets += [range(i + 3, i + 48, 4) for i in range(0, 13, 2)]
    sets.append(range(3, 60, 5))
    return [tuple(s) for s in sets]


def authors_test_sets(
    count: int,
    *,
    dataset: str | None = None,
    max_splits: int | None = None,
    seed: int = 0,
) -> tuple[list[tuple[int, ...]], str]:
    """The test content sets, and a sentence saying how they were chosen."""
    _check_enough(count, validation=False)
    preset = PRESETS.get(dataset or "")
    if preset is not None and preset.contents != count:
        raise SplitError(
            f"{dataset} has {preset.contents} reference contents in the authors' protocol; "
            f"the list has {count}"
        )
    if dataset == "IVC-IC":
        sets, how = ivc_ic_test_sets(), "the authors' 50 fixed IVC-IC test sets"
    else:
        k = held_out(count)
        total = math.comb(count, k)
        if total <= ALL_SPLITS_LIMIT:
            sets = list(itertools.combinations(range(count), k))
            how = f"every {k} of {count} contents ({total} splits)"
        else:
            want = max_splits or DEFAULT_RANDOM_SPLITS
            sets = _random_subsets(count, k, want, seed)
            how = f"{want} random {k}-of-{count} content sets of {total} (seed {seed})"
    if max_splits is not None and len(sets) > max_splits:
        sets, how = sets[:max_splits], f"{how}; the first {max_splits} of them"
    return sets, how


def _random_subsets(count: int, k: int, want: int, seed: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    chosen: dict[tuple[int, ...], None] = {}
    while len(chosen) < want:
        chosen[tuple(sorted(int(i) for i in rng.choice(count, k, replace=False)))] = None
    return list(chosen)


def validation_part(train: tuple[int, ...], *, seed: int, index: int) -> tuple[int, ...]:
    """``round(0.2*len(train))`` (at least 1) training contents, drawn with ``(seed, index)``."""
    want = max(1, held_out(len(train)))
    if len(train) - want < 1:
        raise SplitError(
            f"{len(train)} training contents leave none to train on after holding out "
            f"{want} for validation"
        )
    rng = np.random.default_rng([seed, index])
    return tuple(sorted(int(c) for c in rng.choice(np.array(train), want, replace=False)))


def _check_enough(count: int, *, validation: bool) -> None:
    # round(0.2*n) is 0 below 3 contents: nothing could be held out for testing.
    if held_out(count) < 1:
        parts = "1 test, 1 validation and 1 training" if validation else "1 test and 1 training"
        raise SplitError(
            f"{count} distinct content(s): a content-wise {int(100 - 100 * TEST_FRACTION)}/"
            f"{int(100 * TEST_FRACTION)} split holds out round({TEST_FRACTION}*n) contents and "
            f"needs at least 3 ({parts})"
        )


def content_splits(
    count: int,
    *,
    dataset: str | None = None,
    validation: bool = True,
    seed: int = 12318,
    max_splits: int | None = None,
) -> tuple[list[Split], str]:
    """The intra-dataset splits of ``count`` contents, and how they were chosen."""
    _check_enough(count, validation=validation)
    sets, how = authors_test_sets(count, dataset=dataset, max_splits=max_splits, seed=seed)
    splits = []
    for index, test in enumerate(sets):
        rest = tuple(c for c in range(count) if c not in set(test))
        val = validation_part(rest, seed=seed, index=index) if validation else ()
        train = tuple(c for c in rest if c not in set(val))
        splits.append(Split(index, train, val, tuple(test)))
    return splits, how


def training_split(count: int, *, validation: bool = True, seed: int = 12318) -> Split:
    """All contents for training (cross-dataset or a final fit), some kept for validation."""
    everything = tuple(range(count))
    if not validation:
        return Split(0, everything, (), ())
    if count < 2:
        raise SplitError(
            f"{count} distinct content: choosing the epoch on held-out contents needs at least "
            "2 (or use --select-epoch last)"
        )
    val = validation_part(everything, seed=seed, index=0)
    return Split(0, tuple(c for c in everything if c not in set(val)), val, ())


__all__ = [
    "ALL_SPLITS_LIMIT",
    "DEFAULT_RANDOM_SPLITS",
    "Split",
    "SplitError",
    "authors_test_sets",
    "content_splits",
    "held_out",
    "ivc_ic_test_sets",
    "training_split",
    "validation_part",
]
