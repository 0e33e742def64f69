"""The authors' regressor protocol in torch: intra-dataset splits, cross-dataset, export.

Upstream (``demo_finetune_VQA.py``, ``demo_crossDB_VQA.py``): the feature selection and
stage-4 regrouping of :mod:`heke_runtime.regressor` feed ``Linear(d,128)-ELU-Linear(128,32)-
ELU-Linear(32,1)`` (Xavier-normal weights, zero biases) applied to every snippet, averaged over
snippets; SmoothL1 loss, Adam (lr 1e-4, weight decay 1e-4), seed 12318 set before every split,
300 epochs, shuffled batches with the last partial batch dropped, batch size per dataset.

Epoch selection (``select_epoch``):

- ``"validation"`` (default): the epoch with the best SROCC on validation contents held out
  from the training contents; the test contents are never looked at while training.
- ``"oracle-test"``: the authors' choice, the epoch with the best SROCC *on the test set*
  itself. It picks the luckiest of 300 evaluations on the very data it reports, so it is
  optimistic; heke reproduces it under this name to compare with the paper.
- ``"last"``: the final epoch.

Randomness comes only from a ``torch.Generator`` seeded per run (initialisation, then the
batch order), so the same seed gives the same numbers; the global RNG is left alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from heke_finetune.datasets import SCALE_NOTE, DatasetList, Direction
from heke_finetune.features import FeatureSet, VideoSource, align_to_list
from heke_finetune.metrics import Metrics, evaluate, srocc
from heke_finetune.splits import Split, content_splits, training_split
from heke_runtime.errors import HekeError
from heke_runtime.files import now_utc
from heke_runtime.models import MODELS, POOLINGS, model_entry
from heke_runtime.parity import compare
from heke_runtime.regressor import (
    FeatureLayout,
    Regressor,
    save_regressor,
    upstream_layout,
)
from heke_runtime.results import DEMO_NOTE
from heke_runtime.tolerances import REGRESSOR

SelectEpoch = Literal["validation", "oracle-test", "last"]
SELECT_EPOCH: tuple[str, ...] = ("validation", "oracle-test", "last")
AUTHORS_SEED = 12318
HIDDEN = 32  # upstream FC_network(hidden=32): widths 128 and 32


class FinetuneError(HekeError, ValueError):
    """The fine-tuning inputs or options cannot be used."""


@dataclass(frozen=True)
class TrainConfig:
    """The authors' training settings; ``batch_size=None`` means the dataset's own."""

    epochs: int = 300
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int | None = None
    seed: int = AUTHORS_SEED
    select_epoch: SelectEpoch = "validation"
    stages: tuple[str, ...] | None = None  # None: every stage of the model
    poolings: tuple[str, ...] = POOLINGS
    threads: int = 1  # torch threads while training: the MLP is too small to gain from more

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise FinetuneError(f"epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise FinetuneError(
                f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )
        if self.threads < 1:
            raise FinetuneError(f"threads must be at least 1, got {self.threads}")
        if self.batch_size is not None and self.batch_size < 1:
            raise FinetuneError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.select_epoch not in SELECT_EPOCH:
            raise FinetuneError(
                f"unknown epoch selection {self.select_epoch!r}; valid: {', '.join(SELECT_EPOCH)}"
            )

    @property
    def uses_validation(self) -> bool:
        return self.select_epoch == "validation"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the network


class RegressorNet(nn.Module):
    """Upstream ``FC_network`` on every snippet, then the mean over snippets."""

    def __init__(self, dim: int, generator: torch.Generator) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # default init must not move the global RNG
            self.reg = nn.Sequential(
                nn.Linear(dim, HIDDEN * 4),
                nn.ELU(),
                nn.Linear(HIDDEN * 4, HIDDEN),
                nn.ELU(),
                nn.Linear(HIDDEN, 1),
            )
        for layer in self.linears():  # upstream _initialize_weights
            nn.init.xavier_normal_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.reg if isinstance(m, nn.Linear)]

    def snippet_scores(self, x: torch.Tensor) -> torch.Tensor:
        batch, snippets, dim = x.shape
        return self.reg(x.reshape(batch * snippets, dim)).reshape(batch, snippets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.snippet_scores(x).mean(dim=1)

    def numpy_weights(self) -> dict[str, np.ndarray]:
        """``w1 b1 w2 b2 w3 b3`` as the runtime's regressor file stores them."""
        out = {}
        for i, layer in enumerate(self.linears(), start=1):
            out[f"w{i}"] = layer.weight.detach().numpy().copy()
            out[f"b{i}"] = layer.bias.detach().numpy().copy()
        return out


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Part:
    """Regressor inputs ``x [V,T,d]`` and targets ``y [V]`` of some videos."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Prepared:
    """A dataset's regressor inputs (list order), targets and content of every video."""

    name: str
    x: np.ndarray
    y: np.ndarray
    contents: np.ndarray  # content position per video
    content_ids: tuple[str, ...]
    direction: Direction
    dataset: DatasetList
    features: FeatureSet

    def part(self, rows: np.ndarray) -> Part:
        return Part(self.x[rows], self.y[rows])

    def rows(self, contents: Sequence[int]) -> np.ndarray:
        return np.flatnonzero(np.isin(self.contents, np.asarray(contents, dtype=np.int64)))


def feature_layout(data: FeatureSet, config: TrainConfig) -> FeatureLayout:
    """The runtime's upstream layout for these features and the chosen stages/poolings."""
    return upstream_layout(
        data.model, int(data.features.shape[-1]), stages=config.stages, poolings=config.poolings
    )


def prepare(
    data: FeatureSet, dataset: DatasetList, config: TrainConfig, *, direction: str = "auto"
) -> Prepared:
    """Match features to the list by path, select the layout, compute the targets."""
    aligned = align_to_list(data, dataset)
    layout = feature_layout(aligned, config)
    resolved = dataset.direction(direction)
    return Prepared(
        dataset.name,
        layout.select(aligned.features).astype(np.float32),
        dataset.targets(resolved),
        dataset.content_index(),
        tuple(dataset.content_ids()),
        resolved,
        dataset,
        aligned,
    )


def default_batch_size(prepared: Prepared) -> int:
    """The dataset's batch size from the authors' table, else videos per content (their rule)."""
    preset = prepared.dataset.preset
    if preset is not None:
        return preset.batch_size
    return max(1, round(len(prepared.y) / len(prepared.content_ids)))


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    loss: float
    validation_srocc: float | None
    test_srocc: dict[str, float]


@dataclass
class TrainResult:
    """One training run: the chosen epoch, its metrics and predictions, the whole log."""

    selected_epoch: int
    selection: str
    validation: Metrics | None
    tests: dict[str, Metrics]
    test_epochs: dict[str, int]
    predictions: dict[str, np.ndarray]
    log: list[EpochLog]
    net: RegressorNet | None = field(default=None, repr=False)


def _predict(net: RegressorNet, part: Part) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(part.x)).numpy().astype(np.float64)


def _score(net: RegressorNet, part: Part | None) -> tuple[np.ndarray | None, float | None]:
    if part is None or len(part) == 0:
        return None, None
    pred = _predict(net, part)
    return pred, srocc(pred, part.y)


def train_regressor(
    train: Part,
    config: TrainConfig,
    *,
    batch_size: int,
    validation: Part | None = None,
    tests: Mapping[str, Part] | None = None,
) -> TrainResult:
    """Train one regressor and pick its epoch as ``config.select_epoch`` says."""
    tests = dict(tests or {})
    _check_training(train, config, batch_size, validation, tests)
    with torch_threads(config.threads):
        return _train(train, config, batch_size, validation, tests)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch threads, then restore the caller's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(
    train: Part,
    config: TrainConfig,
    batch_size: int,
    validation: Part | None,
    tests: dict[str, Part],
) -> TrainResult:
    generator = torch.Generator().manual_seed(config.seed)
    net = RegressorNet(train.x.shape[-1], generator)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.SmoothL1Loss()
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y.astype(np.float32))
    tracker = _Tracker(config.select_epoch, tests, config.epochs)
    for epoch in range(config.epochs):
        net.train()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for start in range(0, len(train) - batch_size + 1, batch_size):  # drop_last=True
            rows = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(net(x[rows]), y[rows])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        net.eval()
        tracker.update(epoch, float(np.mean(losses)), net, validation, tests)
    return tracker.result(net, validation, tests)


def _check_training(
    train: Part,
    config: TrainConfig,
    batch_size: int,
    validation: Part | None,
    tests: Mapping[str, Part],
) -> None:
    if len(train) < batch_size:
        raise FinetuneError(
            f"{len(train)} training videos for a batch size of {batch_size}: the authors drop "
            "the last partial batch, so nothing would be trained; lower --batch-size"
        )
    if config.select_epoch == "validation" and (validation is None or len(validation) < 2):
        raise FinetuneError("epoch selection on validation needs at least 2 validation videos")
    if config.select_epoch == "oracle-test" and not tests:
        raise FinetuneError("--select-epoch oracle-test needs a test set")


class _Tracker:
    """Remembers the best epoch (strictly better SROCC, as upstream) and what it produced."""

    def __init__(self, mode: str, tests: Mapping[str, Part], epochs: int) -> None:
        self.mode = mode
        self.final = epochs - 1
        self.log: list[EpochLog] = []
        self.best_val = -np.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch = 0
        self.val_pred: np.ndarray | None = None
        # Per test set: the epoch and predictions kept (its best epoch under oracle-test).
        self.test_best = dict.fromkeys(tests, -np.inf)
        self.test_epoch = dict.fromkeys(tests, 0)
        self.test_pred: dict[str, np.ndarray] = {}

    def update(
        self,
        epoch: int,
        loss: float,
        net: RegressorNet,
        validation: Part | None,
        tests: Mapping[str, Part],
    ) -> None:
        val_pred, val_srocc = _score(net, validation)
        scored = {name: _score(net, part) for name, part in tests.items()}
        self.log.append(
            EpochLog(
                epoch,
                loss,
                val_srocc,
                {n: float(s) for n, (_, s) in scored.items() if s is not None},
            )
        )
        chosen = (self.mode == "last" and epoch == self.final) or (
            self.mode == "validation" and val_srocc is not None and val_srocc > self.best_val
        )
        if chosen:
            self.best_val = val_srocc if val_srocc is not None else self.best_val
            self.best_epoch, self.val_pred = epoch, val_pred
            self.best_state = copy.deepcopy(net.state_dict())
        for name, (pred, score) in scored.items():
            if pred is None or score is None:
                continue
            better = self.mode == "oracle-test" and score > self.test_best[name]
            if chosen or better:
                self.test_best[name] = score
                self.test_epoch[name], self.test_pred[name] = epoch, pred

    def result(
        self, net: RegressorNet, validation: Part | None, tests: Mapping[str, Part]
    ) -> TrainResult:
        keep = self.mode != "oracle-test"
        if keep and self.best_state is None:
            raise FinetuneError("no epoch gave a defined validation SROCC (constant predictions)")
        if keep and self.best_state is not None:
            net.load_state_dict(self.best_state)
        missing = [n for n in tests if n not in self.test_pred]
        if missing:
            raise FinetuneError(f"no epoch gave a defined SROCC on {missing[0]}")
        metrics = {n: evaluate(self.test_pred[n], tests[n].y) for n in tests}
        val = None
        if validation is not None and self.val_pred is not None:
            val = evaluate(self.val_pred, validation.y)
        selected = self.best_epoch if keep else max(self.test_epoch.values(), default=0)
        return TrainResult(
            selected,
            self.mode,
            val,
            metrics,
            dict(self.test_epoch),
            dict(self.test_pred),
            self.log,
            net if keep else None,
        )


# --------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class Outcome:
    """One evaluation: a split's test set (intra) or a test dataset (cross)."""

    split: Split
    test: str
    test_contents: tuple[str, ...]
    metrics: Metrics
    selected_epoch: int
    validation: Metrics | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split.to_dict(),
            "test": self.test,
            "test_contents": list(self.test_contents),
            "selected_epoch": self.selected_epoch,
            "metrics": self.metrics.to_dict(),
            "validation": self.validation.to_dict() if self.validation else None,
        }


def summarise(outcomes: Sequence[Outcome]) -> dict[str, float | int]:
    """Median/mean SROCC, quartiles and range (as the authors print), and the other metrics."""
    values = {
        k: np.array([getattr(o.metrics, k) for o in outcomes])
        for k in ("srocc", "krocc", "plcc", "rmse")
    }
    q1, q2, q3 = np.percentile(values["srocc"], [25, 50, 75])
    summary: dict[str, float | int] = {
        "splits": len(outcomes),
        "srocc_median": float(np.median(values["srocc"])),
        "srocc_mean": float(np.mean(values["srocc"])),
        "srocc_q1": float(q1),
        "srocc_q2": float(q2),
        "srocc_q3": float(q3),
        "srocc_min": float(values["srocc"].min()),
        "srocc_max": float(values["srocc"].max()),
    }
    for key in ("krocc", "plcc", "rmse"):
        summary[f"{key}_median"] = float(np.median(values[key]))
        summary[f"{key}_mean"] = float(np.mean(values[key]))
    return summary


@dataclass
class ProtocolReport:
    """Everything a protocol run produced, ready for JSON or a text table."""

    kind: str  # "intra" or "cross"
    train: str
    config: TrainConfig
    batch_size: int
    splits: str
    layout: dict[str, Any]
    demo_weights: bool
    outcomes: list[Outcome] = field(default_factory=list)

    def summaries(self) -> dict[str, dict[str, float | int]]:
        names = dict.fromkeys(o.test for o in self.outcomes)
        return {n: summarise([o for o in self.outcomes if o.test == n]) for n in names}

    def to_dict(self) -> dict[str, Any]:
        data = {
            "kind": self.kind,
            "train": self.train,
            "config": self.config.to_dict(),
            "batch_size": self.batch_size,
            "splits": self.splits,
            "layout": self.layout,
            "demo_weights": self.demo_weights,
            "targets": SCALE_NOTE,
            "summary": self.summaries(),
            "outcomes": [o.to_dict() for o in self.outcomes],
        }
        if self.demo_weights:
            data["note"] = DEMO_NOTE
        return data

    def text(self) -> str:
        head = (
            f"{self.kind}-dataset, trained on {self.train}; epoch chosen by "
            f"{self.config.select_epoch}; {self.config.epochs} epochs, batch {self.batch_size}, "
            f"seed {self.config.seed}; splits: {self.splits}"
        )
        lines = [head]
        for name, s in self.summaries().items():
            lines.append(
                f"{name}: SROCC median {s['srocc_median']:.4f} mean {s['srocc_mean']:.4f} "
                f"quartiles {s['srocc_q1']:.4f} - {s['srocc_q2']:.4f} - {s['srocc_q3']:.4f} "
                f"range [{s['srocc_min']:.4f}, {s['srocc_max']:.4f}] over {s['splits']} split(s); "
                f"KROCC {s['krocc_median']:.4f} PLCC {s['plcc_median']:.4f} "
                f"RMSE {s['rmse_median']:.4f} (medians)"
            )
        if self.config.select_epoch == "oracle-test":
            lines.append("NOTE: oracle-test picks the epoch on the test set itself (optimistic)")
        if self.demo_weights:
            lines.append(f"NOTE: {DEMO_NOTE}")
        return "\n".join(lines)


OnOutcome = Callable[[Outcome], None]


def intra_dataset(
    data: FeatureSet,
    dataset: DatasetList,
    config: TrainConfig,
    *,
    direction: str = "auto",
    max_splits: int | None = None,
    on_outcome: OnOutcome | None = None,
) -> ProtocolReport:
    """Train and test on every content-wise split of one dataset (authors' enumeration)."""
    prepared = prepare(data, dataset, config, direction=direction)
    splits, how = content_splits(
        len(prepared.content_ids),
        dataset=dataset.name,
        validation=config.uses_validation,
        seed=config.seed,
        max_splits=max_splits,
    )
    batch = config.batch_size or default_batch_size(prepared)
    report = _report("intra", prepared, config, batch, how)
    for split in splits:
        train, val, test = (
            prepared.rows(part) for part in (split.train, split.validation, split.test)
        )
        result = train_regressor(
            prepared.part(train),
            config,
            batch_size=batch,
            validation=prepared.part(val) if len(val) else None,
            tests={dataset.name: prepared.part(test)},
        )
        outcome = Outcome(
            split,
            dataset.name,
            tuple(prepared.content_ids[c] for c in split.test),
            result.tests[dataset.name],
            result.test_epochs[dataset.name],
            result.validation,
        )
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return report


def _report(
    kind: str, prepared: Prepared, config: TrainConfig, batch: int, how: str
) -> ProtocolReport:
    layout = feature_layout(prepared.features, config)
    return ProtocolReport(
        kind, prepared.name, config, batch, how, layout.to_dict(), prepared.features.demo_weights
    )


def cross_dataset(
    train: tuple[FeatureSet, DatasetList],
    tests: Sequence[tuple[FeatureSet, DatasetList]],
    config: TrainConfig,
    *,
    direction: str = "auto",
    test_direction: str = "auto",
) -> tuple[ProtocolReport, TrainResult, Prepared]:
    """Train on all of dataset A (minus validation contents), test on each dataset B."""
    source = prepare(*train, config, direction=direction)
    targets: dict[str, Prepared] = {}
    for data, dataset in tests:
        prepared = prepare(data, dataset, config, direction=test_direction)
        _check_compatible(source, prepared)
        name = dataset.name if dataset.name not in targets else f"{dataset.name}#{len(targets)}"
        targets[name] = prepared
    split = training_split(
        len(source.content_ids), validation=config.uses_validation, seed=config.seed
    )
    batch = config.batch_size or default_batch_size(source)
    result = train_regressor(
        source.part(source.rows(split.train)),
        config,
        batch_size=batch,
        validation=source.part(source.rows(split.validation)) if split.validation else None,
        tests={n: Part(p.x, p.y) for n, p in targets.items()},
    )
    how = f"all {len(source.content_ids)} contents of {source.name}" + (
        f", {len(split.validation)} of them for validation" if split.validation else ""
    )
    report = _report("cross", source, config, batch, how)
    for name, prepared in targets.items():
        report.outcomes.append(
            Outcome(
                split,
                name,
                prepared.content_ids,
                result.tests[name],
                result.test_epochs[name],
                result.validation,
            )
        )
    return report, result, source


def _check_compatible(train: Prepared, test: Prepared) -> None:
    a, b = train.features, test.features
    if a.model != b.model or a.features.shape[-1] != b.features.shape[-1]:
        raise FinetuneError(
            f"{test.name} features are {b.model} of width {b.features.shape[-1]}; "
            f"{train.name} features are {a.model} of width {a.features.shape[-1]}"
        )
    mine, theirs = a.metadata.get("weights_sha256"), b.metadata.get("weights_sha256")
    if mine and theirs and mine != theirs:
        raise FinetuneError(
            f"{train.name} and {test.name} features come from different backbone weights "
            f"({str(mine)[:12]} vs {str(theirs)[:12]})"
        )


def fit(
    data: FeatureSet, dataset: DatasetList, config: TrainConfig, *, direction: str = "auto"
) -> tuple[TrainResult, Prepared, Split]:
    """One regressor on the whole list (validation contents held out to choose the epoch)."""
    if config.select_epoch == "oracle-test":
        raise FinetuneError("a final fit has no test set; use --select-epoch validation or last")
    prepared = prepare(data, dataset, config, direction=direction)
    split = training_split(
        len(prepared.content_ids), validation=config.uses_validation, seed=config.seed
    )
    result = train_regressor(
        prepared.part(prepared.rows(split.train)),
        config,
        batch_size=config.batch_size or default_batch_size(prepared),
        validation=prepared.part(prepared.rows(split.validation)) if split.validation else None,
    )
    return result, prepared, split


# --------------------------------------------------------------------------- export


def export_regressor(
    path: str | Path,
    result: TrainResult,
    prepared: Prepared,
    config: TrainConfig,
    split: Split,
    *,
    batch_size: int,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write the runtime's ``.npz`` regressor after checking NumPy against torch (1e-5)."""
    if result.net is None:
        raise FinetuneError(
            "this run chose its epoch on the test set (oracle-test); such a model is not "
            "exported; train with --select-epoch validation or last"
        )
    layout = feature_layout(prepared.features, config)
    weights = result.net.numpy_weights()
    _check_numpy_matches_torch(result.net, layout, weights, prepared)
    meta = _export_metadata(result, prepared, config, split, batch_size, metrics or {})
    return save_regressor(path, layout, weights, **meta)


def _check_numpy_matches_torch(
    net: RegressorNet, layout: FeatureLayout, weights: dict[str, np.ndarray], prepared: Prepared
) -> None:
    rows = slice(0, min(8, len(prepared.y)))
    with torch.no_grad():
        expected = net.snippet_scores(torch.from_numpy(prepared.x[rows])).numpy()
    numpy_reg = Regressor(layout, weights)
    actual = np.stack([numpy_reg.snippet_scores(f) for f in prepared.features.features[rows]])
    check = compare("regressor export", {"scores": actual}, {"scores": expected}, REGRESSOR)
    if not check:
        raise FinetuneError(f"NumPy regressor disagrees with torch: {check.summary()}")


def _export_metadata(
    result: TrainResult,
    prepared: Prepared,
    config: TrainConfig,
    split: Split,
    batch_size: int,
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    raw = prepared.dataset.raw_scores()
    meta = prepared.features.metadata
    ids = prepared.content_ids
    data: dict[str, Any] = {
        "backbone_weights_sha256": str(meta.get("weights_sha256", "")),
        "demo_weights": prepared.features.demo_weights,
        "training": {
            "dataset": prepared.name,
            "list": Path(prepared.dataset.source).name,
            "videos": len(prepared.y),
            "contents": len(ids),
            "train_contents": [ids[c] for c in split.train],
            "validation_contents": [ids[c] for c in split.validation],
            "features_source": meta.get("source", ""),
            "num_snippets": int(prepared.features.features.shape[1]),
        },
        "label": {
            "scale": SCALE_NOTE,
            "raw_min": float(raw.min()),
            "raw_max": float(raw.max()),
            "list_direction": prepared.direction,
            "reversed": prepared.direction == "mos",
            "output": "DMOS-like on the training list's normalised scale, higher = more distorted",
        },
        "protocol": {
            **config.to_dict(),
            "batch_size": batch_size,
            "selected_epoch": result.selected_epoch,
            "loss": "SmoothL1",
            "optimizer": "Adam",
        },
        "metrics": {
            "validation": result.validation.to_dict() if result.validation else None,
            **{k: v.to_dict() if isinstance(v, Metrics) else v for k, v in metrics.items()},
        },
        "created": now_utc(),
    }
    if prepared.features.demo_weights:
        data["note"] = DEMO_NOTE
    return data


# --------------------------------------------------------------------------- reference features


class FeatureSink(Protocol):
    def has(self, path: str | Path) -> bool: ...
    def add(self, path: str | Path, heads: np.ndarray, features: np.ndarray) -> None: ...
    def fail(self, path: str | Path, reason: str) -> None: ...


def reference_inputs(source: VideoSource, model: str, num_snippets: int) -> tuple[np.ndarray, ...]:
    """The reference model's inputs for one video (whole-video decode: for small sets)."""
    from heke_ref.preprocess import clips_from_yuv, decode_all, reference_clips, reference_pairs

    snippets = model_entry(model).plan == "snippets"
    if source.path.suffix.lower() == ".yuv":
        if source.size is None:
            raise FinetuneError(f"{source.path}: a raw .yuv file needs its size (W x H)")
        if not snippets:
            valid = ", ".join(name for name, e in MODELS.items() if e.plan == "snippets")
            raise FinetuneError(f"raw .yuv input is supported for {valid} only")
        width, height = source.size
        return (clips_from_yuv(source.path, width, height, num_snippets),)
    try:
        frames = decode_all(source.path)
    except (OSError, ValueError) as exc:  # PyAV's errors derive from these
        raise FinetuneError(f"{source.path}: cannot decode ({exc})") from None
    if not frames:
        raise FinetuneError(f"{source.path}: no video frames")
    height, width = frames[0].shape[:2]
    if not snippets:
        return reference_pairs(frames.__getitem__, len(frames), width, height, num_snippets)
    return (reference_clips(frames.__getitem__, len(frames), width, height, num_snippets),)


def extract_reference_features(
    sources: Sequence[VideoSource],
    model: nn.Module,
    model_name: str,
    sink: FeatureSink,
    *,
    num_snippets: int,
    batch_size: int = 12,
    on_video: Callable[[VideoSource, str | None], None] | None = None,
) -> int:
    """Heads and features of every video through the reference model; returns failures.

    A video that cannot be read is recorded as failed (``sink.fail``) and the run goes on.
    """
    failures = 0
    for source in sources:
        if sink.has(source.path):
            continue
        try:
            inputs = reference_inputs(source, model_name, num_snippets)
            heads, features = _run_model(model, inputs, batch_size)
        except HekeError as exc:
            sink.fail(source.path, str(exc))
            failures += 1
            if on_video is not None:
                on_video(source, str(exc))
            continue
        sink.add(source.path, heads, features)
        if on_video is not None:
            on_video(source, None)
    return failures


def _run_model(
    model: nn.Module, inputs: tuple[np.ndarray, ...], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    heads, features = [], []
    count = inputs[0].shape[0]
    with torch.no_grad():
        for start in range(0, count, batch_size):
            batch = [torch.from_numpy(x[start : start + batch_size]) for x in inputs]
            out = model(*batch)
            heads.append(out.heads.numpy())
            features.append(out.features.numpy())
    return np.concatenate(heads), np.concatenate(features)
