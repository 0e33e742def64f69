"""The authors' regression MLP in NumPy, with their feature selection and stage-4 reordering.

Upstream (``demo_finetune_VQA.py``) trains ``Linear(d,128) - ELU - Linear(128,32) - ELU -
Linear(32,1)`` on each snippet's features and averages the snippet scores. Its input is built
from the per-stage ``[mean, max, std]`` statistics (upstream names: ave, max, std):

1. in every stage, drop the pooling kinds not selected (keeping the order mean, max, std);
2. concatenate the selected stages in order;
3. the last stage is regrouped: its ``[p, C]`` block (p poolings) becomes ``[4, p, C/4]``,
   i.e. four groups of ``C/4`` channels, each holding its own mean/max/std
   (upstream hard-codes C/4 = 128: ``reshape(..., -1, 4, 128)`` then swap the two axes).

That selection is a fixed permutation, so :class:`FeatureLayout` computes it once as an index
array into the engine's ``features`` vector. Files are ``.npz`` (float arrays ``w1 b1 w2 b2
w3 b3`` in ``torch.nn.Linear`` orientation) plus a JSON ``metadata`` string inside the same
file, read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from heke_runtime.errors import HekeError
from heke_runtime.files import read_npz, sha256_file, write_npz
from heke_runtime.models import MODELS, POOLINGS, ModelEntry

FORMAT = "heke-regressor/1"
GROUPS = 4  # the four knowledge heads' channel groups
LAYERS = ("w1", "b1", "w2", "b2", "w3", "b3")


class RegressorError(HekeError, ValueError):
    """A regressor file is unreadable or does not fit the engine's features."""


def _entry(model: str) -> ModelEntry:
    if model not in MODELS:
        raise RegressorError(f"no feature layout known for model {model!r}")
    return MODELS[model]


def stage_names(model: str) -> tuple[str, ...]:
    """The model's feature stages, in ``features`` order (its model entry's)."""
    return _entry(model).stages


def stage_channels(model: str, feature_dim: int) -> tuple[int, ...]:
    """Channels per stage of an engine whose ``features`` has ``feature_dim`` values."""
    try:
        return _entry(model).stage_channels(feature_dim)
    except ValueError as exc:
        raise RegressorError(str(exc)) from None


@dataclass(frozen=True)
class FeatureLayout:
    """Which stages and pooling kinds feed the regressor, and how they are ordered."""

    model: str
    stage_channels: tuple[int, ...]  # every stage of the engine, in feature order
    stages: tuple[str, ...]  # selected stage names, in feature order
    poolings: tuple[str, ...] = POOLINGS
    grouped: tuple[str, ...] = ()  # selected stages regrouped into GROUPS channel groups

    def __post_init__(self) -> None:
        names = stage_names(self.model)
        if len(self.stage_channels) != len(names):
            raise RegressorError(
                f"{self.model} has {len(names)} stages, got {len(self.stage_channels)} widths"
            )
        _check_subset("stage", self.stages, names)
        _check_subset("pooling", self.poolings, POOLINGS)
        _check_subset("grouped stage", self.grouped, self.stages)
        for name in self.grouped:
            if self.channels(name) % GROUPS:
                raise RegressorError(f"stage {name} has {self.channels(name)} channels, not /4")

    def channels(self, stage: str) -> int:
        return self.stage_channels[stage_names(self.model).index(stage)]

    @property
    def feature_dim(self) -> int:
        """Width of the engine's ``features`` output this layout reads from."""
        return 3 * sum(self.stage_channels)

    @property
    def dim(self) -> int:
        """Width of the regressor's input."""
        return len(self.poolings) * sum(self.channels(s) for s in self.stages)

    def indices(self) -> np.ndarray:
        """Positions in ``features`` of each regressor input, in the regressor's order."""
        starts = np.cumsum((0, *(3 * c for c in self.stage_channels)))
        parts = []
        for name in self.stages:
            stage = stage_names(self.model).index(name)
            width = self.stage_channels[stage]
            kinds = [POOLINGS.index(p) for p in POOLINGS if p in self.poolings]
            block = starts[stage] + np.array(kinds)[:, None] * width + np.arange(width)[None, :]
            if name in self.grouped:  # [p, C] -> [p, 4, C/4] -> [4, p, C/4]
                block = block.reshape(len(kinds), GROUPS, width // GROUPS).transpose(1, 0, 2)
            parts.append(block.reshape(-1))
        return np.concatenate(parts).astype(np.int64)

    def select(self, features: np.ndarray) -> np.ndarray:
        """``[..., feature_dim]`` engine features to ``[..., dim]`` regressor input."""
        if features.shape[-1] != self.feature_dim:
            raise RegressorError(
                f"features have width {features.shape[-1]}; this regressor expects "
                f"{self.feature_dim} ({self.model} stages {list(self.stage_channels)})"
            )
        return np.take(features, self.indices(), axis=-1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "stage_channels": list(self.stage_channels),
            "stages": list(self.stages),
            "poolings": list(self.poolings),
            "grouped": list(self.grouped),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureLayout:
        model = str(data["model"])
        return cls(
            model=model,
            stage_channels=tuple(int(c) for c in data["stage_channels"]),
            stages=tuple(data["stages"]),
            poolings=tuple(data.get("poolings", POOLINGS)),
            grouped=tuple(data.get("grouped", _entry(model).grouped)),
        )


def _check_subset(what: str, chosen: Sequence[str], valid: Sequence[str]) -> None:
    if not chosen and what != "grouped stage":
        raise RegressorError(f"select at least one {what} (valid: {', '.join(valid)})")
    bad = [c for c in chosen if c not in valid]
    if bad:
        raise RegressorError(f"unknown {what} {bad[0]!r}; valid: {', '.join(valid)}")
    if list(chosen) != [v for v in valid if v in chosen]:
        raise RegressorError(f"{what}s must be unique and in order {list(valid)}: {list(chosen)}")


def upstream_layout(
    model: str,
    feature_dim: int,
    *,
    stages: Sequence[str] | None = None,
    poolings: Sequence[str] = POOLINGS,
) -> FeatureLayout:
    """The upstream layout (``--f1..--f4 --fave --fmax --fstd``) for an engine's features."""
    entry = _entry(model)
    chosen = tuple(stages) if stages is not None else entry.stages
    grouped = tuple(s for s in entry.grouped if s in chosen)
    return FeatureLayout(
        model, stage_channels(model, feature_dim), chosen, tuple(poolings), grouped
    )


def elu(x: np.ndarray) -> np.ndarray:
    """ELU with alpha 1, as ``torch.nn.ELU``; expm1 keeps precision near zero."""
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


@dataclass(frozen=True)
class Regressor:
    """The fine-tuned MLP: per-snippet scores, averaged over snippets."""

    layout: FeatureLayout
    weights: dict[str, np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        missing = [k for k in LAYERS if k not in self.weights]
        if missing:
            raise RegressorError(f"regressor weights lack {missing}")
        w1, b1, w2, b2, w3, b3 = (self.weights[k] for k in LAYERS)
        shapes_ok = (
            w1.ndim == w2.ndim == w3.ndim == 2
            and w1.shape[1] == self.layout.dim
            and b1.shape == (w1.shape[0],)
            and w2.shape[1] == w1.shape[0]
            and b2.shape == (w2.shape[0],)
            and w3.shape == (1, w2.shape[0])
            and b3.shape == (1,)
        )
        if not shapes_ok:
            shapes = {k: tuple(self.weights[k].shape) for k in LAYERS}
            raise RegressorError(
                f"regressor weight shapes {shapes} do not form Linear({self.layout.dim},h)-"
                "ELU-Linear(h,h2)-ELU-Linear(h2,1) for the recorded feature layout"
            )

    def snippet_scores(self, features: np.ndarray) -> np.ndarray:
        """``[S, feature_dim]`` engine features -> ``[S]`` per-snippet scores (float32)."""
        x = self.layout.select(np.asarray(features, dtype=np.float32))
        w = {k: v.astype(np.float32, copy=False) for k, v in self.weights.items()}
        h = elu(x @ w["w1"].T + w["b1"])
        h = elu(h @ w["w2"].T + w["b2"])
        return (h @ w["w3"].T + w["b3"])[..., 0]

    def predict(self, features: np.ndarray) -> float:
        """The video score: the mean of the per-snippet scores (upstream)."""
        return float(np.mean(self.snippet_scores(features)))

    def check_engine(self, model: str, feature_dim: int, weights_sha256: str = "") -> None:
        """One-line error when this regressor was trained on other features than the engine's."""
        if model != self.layout.model:
            raise RegressorError(
                f"regressor{self._named()} was trained on {self.layout.model} features; "
                f"the engine is {model}"
            )
        if feature_dim != self.layout.feature_dim:
            raise RegressorError(
                f"regressor{self._named()} expects {self.layout.feature_dim} features "
                f"(stages {list(self.layout.stage_channels)}); the engine gives {feature_dim}"
            )
        trained = str(self.metadata.get("backbone_weights_sha256", ""))
        if trained and weights_sha256 and trained != weights_sha256:
            raise RegressorError(
                f"regressor{self._named()} was trained on features of backbone weights "
                f"{trained[:12]}; the engine holds weights {weights_sha256[:12]}"
            )

    def _named(self) -> str:
        return f" {self.source}" if self.source else ""


def save_regressor(
    path: str | Path,
    layout: FeatureLayout,
    weights: Mapping[str, np.ndarray],
    **metadata: Any,
) -> Path:
    """Write ``.npz`` weights with the layout and ``metadata`` as JSON inside (atomic)."""
    path = Path(path)
    meta = {"format": FORMAT, "layout": layout.to_dict(), **metadata}
    arrays: dict[str, Any] = {k: np.asarray(weights[k], dtype=np.float32) for k in LAYERS}
    Regressor(layout, arrays, meta)  # refuse to write what could not be loaded back
    arrays["metadata"] = np.array(json.dumps(meta, sort_keys=True))  # a str array: no pickle
    write_npz(path, arrays)
    return path


def load_regressor(path: str | Path) -> Regressor:
    """Read a regressor written by :func:`save_regressor` (never unpickles)."""
    path = Path(path)
    arrays = read_npz(path, RegressorError, "regressor")
    if "metadata" not in arrays:
        raise RegressorError(f"{path}: no 'metadata' entry (not written by heke?)")
    try:
        return _regressor_from(arrays, str(arrays.pop("metadata")), path)
    except RegressorError as exc:
        raise RegressorError(f"{path}: {exc}") from None


def _regressor_from(arrays: dict[str, np.ndarray], text: str, path: Path) -> Regressor:
    try:
        meta = json.loads(text)
        found = meta.get("format")
        layout_data = meta["layout"]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise RegressorError(f"unreadable metadata ({type(exc).__name__}: {exc})") from None
    if found != FORMAT:
        raise RegressorError(f"format {found!r}, expected {FORMAT}")
    try:
        layout = FeatureLayout.from_dict(layout_data)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, RegressorError):
            raise
        raise RegressorError(f"unreadable layout ({type(exc).__name__}: {exc})") from None
    return Regressor(layout, arrays, meta, sha256_file(path), str(path))
