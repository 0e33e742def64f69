"""Feature files: heke's ``.npz`` and the authors' pickle, and matching them to a dataset list.

A heke features file (``heke-features/1``) is an ``.npz`` read with ``allow_pickle=False``:

- ``features [V,T,D]`` float32: per video and snippet, the engine's ``features`` output
  (per stage ``[mean, max, std]`` per channel, docs/ARCHITECTURE.md);
- ``heads [V,T,4]`` float32 (absent when converted from an authors' pickle, which has none);
- ``paths [V]``: absolute, normalised video paths (videos are matched to lists by path);
- ``labels [V]`` float32, optional: the normalised scores an authors' pickle carried;
- ``metadata``: JSON with the model, sampling, backbone weights and provenance.

The authors' pickle is ``{'features': [(f1, f2, f3, f4) per video], 'mos': float32 [V]}``
(``f_i [T, 3*C_i]``; the resnet model nests ``((rgb f1..f4), (dif f1..f4))``), in the order
of their dataset list, ``mos`` being the normalised scores. Unpickling can run code, so it is
only done when the caller says the file is trusted, and then through an unpickler that
accepts nothing but NumPy arrays, lists, tuples and dicts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import shutil
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from heke_finetune.datasets import DatasetList, normalise_scores
from heke_runtime.errors import HekeError
from heke_runtime.files import atomic_write_bytes, now_utc, read_npz, write_npz
from heke_runtime.models import HEAD_NAMES, MODELS
from heke_runtime.regressor import stage_channels
from heke_runtime.results import path_key
from heke_runtime.scores import blind_scores
from heke_runtime.tolerances import LABEL_ORDER

FORMAT = "heke-features/1"
PICKLE_PROTOCOL = 3  # what the authors' Python 3.6 wrote by default; readable by it
TRUST_PICKLE_HELP = (
    "the file is a pickle you trust: loading a pickle can run arbitrary code "
    "(heke also refuses anything in it but NumPy arrays, lists, tuples and dicts)"
)


class FeaturesError(HekeError, ValueError):
    """A features file is unreadable, inconsistent, or does not match a dataset list."""


@dataclass(frozen=True)
class FeatureSet:
    """Per-snippet features (and heads) of a set of videos, with where they came from."""

    paths: tuple[str, ...]
    features: np.ndarray  # [V, T, D] float32
    heads: np.ndarray | None = None  # [V, T, 4] float32
    labels: np.ndarray | None = None  # [V] float32
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = len(self.paths)
        if self.features.ndim != 3 or self.features.shape[0] != count:
            raise FeaturesError(
                f"features of shape {self.features.shape} for {count} videos; need [V, T, D]"
            )
        if self.heads is not None and self.heads.shape != (*self.features.shape[:2], 4):
            raise FeaturesError(
                f"heads of shape {self.heads.shape} do not match features "
                f"{self.features.shape} (need [V, T, 4])"
            )
        if self.labels is not None and self.labels.shape != (count,):
            raise FeaturesError(f"labels of shape {self.labels.shape} for {count} videos")
        if len(set(self.paths)) != count:
            raise FeaturesError("a video appears twice in the features")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def model(self) -> str:
        return str(self.metadata.get("model", "r2p1d_HEKE_4"))

    @property
    def demo_weights(self) -> bool:
        return bool(self.metadata.get("demo_weights", False))

    def take(self, rows: Sequence[int]) -> FeatureSet:
        """The videos at ``rows``, in that order."""
        index = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            paths=tuple(self.paths[i] for i in index),
            features=self.features[index],
            heads=None if self.heads is None else self.heads[index],
            labels=None if self.labels is None else self.labels[index],
        )

    def blind_scores(self) -> dict[str, np.ndarray]:
        """Each head averaged over snippets, and the ensemble (their mean), per video."""
        if self.heads is None:
            raise FeaturesError(
                "these features carry no head outputs (converted from an authors' pickle?); "
                "blind evaluation needs features written by heke-features or heke-run"
            )
        return blind_scores(self.heads)


# --------------------------------------------------------------------------- npz


def save_features(path: str | Path, data: FeatureSet) -> Path:
    """Write ``data`` as a heke features ``.npz`` (atomic: never half-written)."""
    path = Path(path)
    meta = {**data.metadata, "format": FORMAT, "feature_dim": int(data.features.shape[-1])}
    meta.setdefault("heads_order", list(HEAD_NAMES))
    arrays: dict[str, np.ndarray] = {
        "metadata": np.array(json.dumps(meta, sort_keys=True)),
        "paths": np.array(data.paths, dtype=str),
        "features": np.asarray(data.features, dtype=np.float32),
    }
    if data.heads is not None:
        arrays["heads"] = np.asarray(data.heads, dtype=np.float32)
    if data.labels is not None:
        arrays["labels"] = np.asarray(data.labels, dtype=np.float32)
    write_npz(path, arrays)
    return path


def load_features(path: str | Path) -> FeatureSet:
    """Read a heke features ``.npz`` (never unpickles)."""
    path = Path(path)
    arrays = read_npz(path, FeaturesError, "features", "heke features")
    missing = [k for k in ("metadata", "paths", "features") if k not in arrays]
    if missing:
        raise FeaturesError(f"{path}: lacks {missing} (not written by heke-features?)")
    try:
        meta = json.loads(str(arrays["metadata"]))
    except json.JSONDecodeError as exc:
        raise FeaturesError(f"{path}: unreadable metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise FeaturesError(f"{path}: format {found!r}, expected {FORMAT}")
    try:
        return FeatureSet(
            tuple(str(p) for p in arrays["paths"].reshape(-1)),
            arrays["features"].astype(np.float32, copy=False),
            arrays.get("heads"),
            arrays.get("labels"),
            meta,
        )
    except FeaturesError as exc:
        raise FeaturesError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- matching


def _portable(path: str) -> str:
    return os.path.normpath(path).replace(os.sep, "/")


def align_to_list(
    data: FeatureSet, dataset: DatasetList, *, source: str = "features"
) -> FeatureSet:
    """The features of the list's videos, in the list's order (matched by path)."""
    return data.take(match_to_list(data.paths, dataset, source=source))


def match_to_list(
    paths: Sequence[str], dataset: DatasetList, *, source: str = "features"
) -> list[int]:
    """For each video of the list, its position in ``paths``.

    A list path matches when both resolve to the same absolute path, or, failing that, when
    it is the unique path in ``paths`` ending with the list's relative path (features made
    under another root folder). Every listed video must be found, each exactly once.
    """
    exact = {_portable(os.path.abspath(p)): i for i, p in enumerate(paths)}
    by_name: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        by_name[os.path.basename(_portable(p))].append(i)
    rows: list[int] = []
    missing: list[str] = []
    for entry, resolved in zip(dataset.entries, dataset.paths()):
        row = exact.get(_portable(str(resolved)))
        if row is None:
            row = _suffix_match(paths, by_name, entry.path, source, dataset.source)
        if row is None:
            missing.append(f"{entry.path} (line {entry.line})")
        else:
            rows.append(row)
    if missing:
        raise FeaturesError(
            f"{source} has no entry for {len(missing)} of the {len(dataset)} videos of "
            f"{dataset.source} (first: {missing[0]}); score them, or check the list's base folder"
        )
    if len(set(rows)) != len(rows):
        raise FeaturesError(f"{source}: two videos of {dataset.source} match the same entry")
    return rows


def _suffix_match(
    paths: Sequence[str], by_name: dict[str, list[int]], relative: str, source: str, listed: str
) -> int | None:
    tail = _portable(relative)
    hits = [
        i
        for i in by_name.get(os.path.basename(tail), [])
        if _portable(paths[i]) == tail or _portable(paths[i]).endswith("/" + tail)
    ]
    if len(hits) > 1:
        raise FeaturesError(
            f"{source}: {relative} of {listed} matches {len(hits)} feature paths "
            f"({paths[hits[0]]}, {paths[hits[1]]}); use absolute paths"
        )
    return hits[0] if hits else None


# --------------------------------------------------------------------------- authors' pickle


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Accepts the few globals a pickle of NumPy arrays needs, and nothing else."""

    ALLOWED = frozenset(
        {
            (module, name)
            for module in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name in ("_reconstruct", "scalar")
        }
        | {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),  # bytes in protocol-2 pickles
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise FeaturesError(
                f"the pickle asks for {module}.{name}, which a features pickle never needs; refused"
            )
        with warnings.catch_warnings():  # numpy.core is a deprecated alias under NumPy 2
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def read_authors_pickle(
    path: str | Path, *, trust_pickle: bool = False
) -> tuple[list[Any], np.ndarray]:
    """``(features per video, mos)`` from an authors' pickle; needs ``trust_pickle=True``."""
    path = Path(path)
    if not trust_pickle:
        raise FeaturesError(
            f"{path}: reading a pickle can run code; pass --trust-pickle (trust_pickle=True) "
            "only for a file you trust"
        )
    if not path.is_file():
        raise FeaturesError(f"{path}: no such file")
    try:
        with path.open("rb") as handle:
            obj = _ArraysOnlyUnpickler(handle).load()
    except FeaturesError as exc:
        raise FeaturesError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise FeaturesError(
            f"{path}: not a readable pickle ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(obj, dict) or not {"features", "mos"} <= set(obj):
        raise FeaturesError(f"{path}: not an authors' features pickle (no 'features'/'mos')")
    return list(obj["features"]), np.asarray(obj["mos"])


def _flatten_stages(video: Any, count: int, where: str) -> list[np.ndarray]:
    parts: list[np.ndarray] = []
    stack = [video]
    while stack:
        item = stack.pop(0)
        if isinstance(item, (tuple, list)):
            stack[:0] = list(item)
        else:
            parts.append(np.asarray(item))
    if len(parts) != count or any(p.ndim != 2 for p in parts):
        shapes = [p.shape for p in parts]
        raise FeaturesError(f"{where}: expected {count} stage arrays [T, 3C], got {shapes}")
    return parts


def features_from_authors_pickle(
    path: str | Path,
    dataset: DatasetList,
    *,
    trust_pickle: bool = False,
    model: str = "r2p1d_HEKE_4",
) -> FeatureSet:
    """An authors' pickle as a :class:`FeatureSet`, its videos named by the list's paths.

    Like the authors' code, the pickle's normalised scores must equal the list's (that is
    their check that the two are in the same order).
    """
    videos, mos = read_authors_pickle(path, trust_pickle=trust_pickle)
    if len(videos) != len(dataset) or mos.shape != (len(dataset),):
        raise FeaturesError(
            f"{path}: {len(videos)} videos and {mos.size} scores; {dataset.source} lists "
            f"{len(dataset)}"
        )
    expected = normalise_scores(dataset.raw_scores(), dataset.source)
    worst = float(np.max(np.abs(expected.astype(np.float64) - mos.astype(np.float64))))
    if worst > LABEL_ORDER.atol:
        raise FeaturesError(
            f"{path}: its scores differ from {dataset.source}'s normalised scores by up to "
            f"{worst:.3g}: not the same videos in the same order"
        )
    if model not in MODELS:
        raise FeaturesError(f"no feature layout known for model {model!r}")
    stages = len(MODELS[model].stages)
    rows = [
        np.concatenate(_flatten_stages(v, stages, f"{path} video {i}"), axis=1)
        for i, v in enumerate(videos)
    ]
    try:
        features = np.stack(rows).astype(np.float32, copy=False)
    except ValueError:
        raise FeaturesError(f"{path}: videos have different snippet counts or widths") from None
    meta = {
        "model": model,
        "num_snippets": int(features.shape[1]),
        "source": "authors-pickle",
        "source_file": Path(path).name,
        "weights_sha256": "",
        "demo_weights": False,
        "created": now_utc(),
    }
    return FeatureSet(tuple(str(p) for p in dataset.paths()), features, None, mos, meta)


def authors_pickle_bytes(data: FeatureSet, mos: np.ndarray) -> bytes:
    """The authors' pickle for ``data`` (per-stage arrays) with scores ``mos``."""
    widths = stage_channels(data.model, int(data.features.shape[-1]))
    bounds = np.cumsum([0, *(3 * c for c in widths)])
    backbones = len(MODELS[data.model].backbones)  # the pickle nests stages per backbone
    videos: list[Any] = []
    for row in data.features:
        parts = tuple(np.ascontiguousarray(row[:, a:b]) for a, b in itertools.pairwise(bounds))
        each = len(parts) // backbones
        nested = tuple(parts[i : i + each] for i in range(0, len(parts), each))
        videos.append(parts if backbones == 1 else nested)
    obj = {"features": videos, "mos": np.asarray(mos, dtype=np.float32)}
    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


def write_authors_pickle(
    path: str | Path, data: FeatureSet, dataset: DatasetList | None = None
) -> Path:
    """Write the authors' pickle; videos in the list's order when a list is given.

    ``mos`` is the labels the features carry (from a pickle), else the list's normalised
    scores, computed in float32 as the authors' code does so that their order check passes.
    """
    if dataset is not None:
        data = align_to_list(data, dataset)
    if data.labels is not None:
        mos = data.labels
    elif dataset is not None:
        mos = normalise_scores(dataset.raw_scores(), dataset.source)
    else:
        raise FeaturesError("these features carry no scores; give the dataset list")
    path = Path(path)
    atomic_write_bytes(path, authors_pickle_bytes(data, mos))
    return path


# --------------------------------------------------------------------------- resumable writer


@dataclass(frozen=True)
class VideoSource:
    """A video to featurise; ``size=(W, H)`` for raw ``.yuv`` files."""

    path: Path
    size: tuple[int, int] | None = None


IDENTITY_KEYS = (
    "model",
    "num_snippets",
    "frames_per_snippet",
    "weights_sha256",
    "engine_sha256",
    "source",
)


class FeatureWriter:
    """Collects per-video features for ``out`` and writes it once, whole, at the end.

    Each finished video goes to its own small file in ``<out>.partial/`` (written atomically),
    so an interrupted run resumes where it stopped (``resume=True``); ``finish`` assembles
    ``out`` atomically and removes the folder. Resuming with other settings (model, weights,
    sampling) is refused. Videos that failed are listed in the file's metadata and retried on
    resume.
    """

    def __init__(
        self,
        out: str | Path,
        metadata: dict[str, Any],
        *,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.metadata = dict(metadata)
        self.resume = resume
        self.overwrite = overwrite
        self.failed: dict[str, str] = {}
        self._done: dict[str, Path] = {}
        self._previous: FeatureSet | None = None

    def __enter__(self) -> FeatureWriter:
        self._prepare()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None  # the partial folder stays for --resume

    def _prepare(self) -> None:
        if self.out.is_dir():
            raise FeaturesError(f"{self.out}: is a directory; give a .npz file")
        exists = self.out.is_file() or self.partial.is_dir()
        if exists and not (self.resume or self.overwrite):
            raise FeaturesError(
                f"{self.out} (or its .partial folder) exists; pass --resume to continue it or "
                "--overwrite to replace it"
            )
        if exists and self.overwrite and not self.resume:
            shutil.rmtree(self.partial, ignore_errors=True)
            self.out.unlink(missing_ok=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.resume and self.out.is_file():
            self._previous = load_features(self.out)
            self._check_identity(self._previous.metadata, str(self.out))
        self.partial.mkdir(exist_ok=True)
        self._load_partial()

    def _check_identity(self, other: dict[str, Any], where: str) -> None:
        for key in IDENTITY_KEYS:
            mine, theirs = self.metadata.get(key), other.get(key)
            if mine is not None and theirs is not None and mine != theirs:
                raise FeaturesError(
                    f"{where} was made with {key}={theirs!r}, this run has {mine!r}; "
                    "use another output or --overwrite"
                )

    def _load_partial(self) -> None:
        config = self.partial / "metadata.json"
        if config.is_file():
            self._check_identity(json.loads(config.read_text()), str(self.partial))
        else:
            text = json.dumps(self.metadata, sort_keys=True, default=str)
            atomic_write_bytes(config, text.encode())
        for shard in sorted(self.partial.glob("*.npz")):
            with np.load(shard, allow_pickle=False) as data:
                self._done[str(data["path"])] = shard

    def has(self, path: str | Path) -> bool:
        key = path_key(path)
        previous = self._previous.paths if self._previous is not None else ()
        return key in self._done or key in previous

    def add(self, path: str | Path, heads: np.ndarray, features: np.ndarray) -> None:
        key = path_key(path)
        name = hashlib.sha256(key.encode()).hexdigest()[:20] + ".npz"
        shard = {
            "path": np.array(key),
            "heads": np.asarray(heads, dtype=np.float32),
            "features": np.asarray(features, dtype=np.float32),
        }
        write_npz(self.partial / name, shard)
        self._done[key] = self.partial / name
        self.failed.pop(key, None)

    def fail(self, path: str | Path, reason: str) -> None:
        self.failed[path_key(path)] = reason

    def finish(self, order: Sequence[str | Path]) -> FeatureSet:
        """Write ``out`` with every finished video, in ``order`` (others after, as found)."""
        rows = self._collect()
        wanted = [path_key(p) for p in order]
        keys = [k for k in wanted if k in rows] + [k for k in rows if k not in set(wanted)]
        if not keys:
            raise FeaturesError(f"{self.out}: no video was scored; nothing written")
        shapes = {rows[k][1].shape for k in keys}
        if len(shapes) != 1:
            raise FeaturesError(f"videos have different snippet counts {sorted(shapes)}")
        meta = {**self.metadata, "created": now_utc()}
        meta["failed"] = [{"path": k, "error": v} for k, v in self.failed.items()]
        data = FeatureSet(
            tuple(keys),
            np.stack([rows[k][1] for k in keys]),
            np.stack([rows[k][0] for k in keys]),
            None,
            meta,
        )
        save_features(self.out, data)
        shutil.rmtree(self.partial, ignore_errors=True)
        return data

    def _collect(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self._previous is not None and self._previous.heads is not None:
            for i, key in enumerate(self._previous.paths):
                rows[key] = (self._previous.heads[i], self._previous.features[i])
        for key, shard in self._done.items():
            with np.load(shard, allow_pickle=False) as data:
                rows[key] = (np.array(data["heads"]), np.array(data["features"]))
        return rows


__all__ = [
    "FORMAT",
    "TRUST_PICKLE_HELP",
    "FeatureSet",
    "FeatureWriter",
    "FeaturesError",
    "VideoSource",
    "align_to_list",
    "authors_pickle_bytes",
    "features_from_authors_pickle",
    "load_features",
    "match_to_list",
    "read_authors_pickle",
    "save_features",
    "write_authors_pickle",
]
