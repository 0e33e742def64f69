"""The Ray Data stages of a corpus run: manifest rows, decode tasks, the inference actors.

Everything a stage needs travels as plain data (paths, numbers, dicts); each actor builds
its own :class:`Scorer` from that on its first batch, so an engine loads once per actor and
never crosses the network. Decoding and preprocessing run as ordinary CPU tasks (retried by
Ray when a worker or node dies); inference, the regressor and the record run in the actor
pool. Per-video errors never escape a stage: they become error records, as with ``Scorer``.

Ray itself is never imported here: the functions and the actor class are plain Python that
Ray Data calls; :func:`build_dataset` receives the ``ray`` module from the caller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from heke_runtime.corpus import CorpusError
from heke_runtime.corpus_store import row_from_record, video_id
from heke_runtime.results import VideoResult, failed, one_line
from heke_runtime.scorer import (
    Scorer,
    ScorerError,
    _named_inputs,
    _snippets,
    _spread,
    _summary,
    _video_meta,
    error_reason,
)

INPUT_SCHEMA = pa.schema([("id", pa.string()), ("path", pa.string()), ("label", pa.float64())])
PREPARED_FIELDS = [
    ("payload", pa.large_binary()),  # a pickled Prepared; null when decoding failed
    ("prep_error", pa.string()),
    ("prep_s", pa.float64()),
]


@dataclass(frozen=True)
class Prepared:
    """What a decode task hands an actor: ``load_clips``' outputs and its warnings."""

    loaded: Any  # clips [T,3,N,H,W], or (rgb, dif) for resnet
    info: Any  # heke_runtime.decode.VideoInfo (holds the frame times the records need)
    plan: np.ndarray
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class ComputePlan:
    """How the stages are laid out on the cluster (decided on the driver)."""

    device: str  # "cpu" or "gpu"
    backend: str
    min_actors: int
    max_actors: int
    actor_cpus: float
    actor_gpus: float
    decode_cpus: float
    rows_per_block: int
    videos_per_call: int
    max_retries: int


# --------------------------------------------------------------------------- inputs


def input_rows(paths: list[str], ids: list[str | None], labels: list[float | None]) -> pa.Table:
    """Rows of :data:`INPUT_SCHEMA`; a missing id becomes the hash of the path."""
    filled = [i if i else video_id(p) for i, p in zip(ids, paths)]
    return pa.table({"id": filled, "path": paths, "label": labels}, schema=INPUT_SCHEMA)


def normalise_manifest(batch: pa.Table, *, base: str) -> pa.Table:
    """Manifest rows as :data:`INPUT_SCHEMA`: paths made absolute from the manifest's folder
    (every worker must see the same path), ids as text (hash of the path when absent),
    labels as numbers. Runs in Ray Data tasks."""
    names = set(batch.column_names)
    paths = [_absolute(p, base) for p in batch.column("path").to_pylist()]
    ids: list[Any] = batch.column("id").to_pylist() if "id" in names else [None] * len(paths)
    ids = [None if i is None or str(i) == "" else str(i) for i in ids]
    labels: list[float | None] = [None] * len(paths)
    if "label" in names:
        column = batch.column("label")
        try:
            labels = column.cast(pa.float64()).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise CorpusError(
                f"manifest labels must be numbers; got {column.type} values such as "
                f"{column.drop_null().slice(0, 3).to_pylist()}"
            ) from None
    return input_rows(paths, ids, labels)


def _absolute(path: Any, base: str) -> str:
    if path is None or str(path).strip() == "":
        raise CorpusError("a manifest row has an empty path")
    text = os.path.expanduser(str(path).strip())
    return os.path.normpath(text if os.path.isabs(text) else os.path.join(base, text))


def missing_in(ids: pa.Array, present: pa.Array) -> pa.Array:
    """Ids of ``ids`` that are not in ``present``."""
    return ids.filter(pc.invert(pc.is_in(ids, value_set=present)))


# --------------------------------------------------------------------------- decode tasks


def prepare_batch(
    batch: pa.Table, *, model: str, num_snippets: int, size: list[int] | None
) -> pa.Table:
    """Decode and preprocess each video of ``batch``; failures become ``prep_error``."""
    payloads: list[bytes | None] = []
    errors: list[str | None] = []
    seconds: list[float] = []
    dims = (int(size[0]), int(size[1])) if size else None
    for path in batch.column("path").to_pylist():
        start = time.perf_counter()
        try:
            payloads.append(_prepare(path, model, num_snippets, dims))
            errors.append(None)
        except Exception as exc:  # one bad file must not stop a batch (as in Scorer.score)
            payloads.append(None)
            errors.append(error_reason(exc, path))
        seconds.append(time.perf_counter() - start)
    for (name, kind), values in zip(PREPARED_FIELDS, (payloads, errors, seconds)):
        batch = batch.append_column(pa.field(name, kind), pa.array(values, kind))
    return batch


def _prepare(path: str, model: str, num_snippets: int, size: tuple[int, int] | None) -> bytes:
    from heke_runtime.preprocess import load_clips

    # The same calls and warning capture as Scorer._score, so records agree exactly.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded, info, plan = load_clips(path, num_snippets, size=size, model=model)
    notes = tuple(dict.fromkeys(one_line(str(w.message)) for w in caught))
    return pickle.dumps(Prepared(loaded, info, np.asarray(plan), notes), protocol=5)


# --------------------------------------------------------------------------- inference actor


class InferActor:
    """One engine per actor, loaded on the first batch it receives.

    ``config`` is plain data: the ``Scorer`` arguments plus ``run_id``. A batch of prepared
    rows comes back as record rows (:data:`heke_runtime.corpus_store.ROW_SCHEMA`).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = dict(config)
        self._scorer: Scorer | None = None

    def _load(self) -> Scorer:
        if self._scorer is None:
            options = dict(self.config["scorer"])
            if options.get("size"):
                options["size"] = tuple(options["size"])
            scorer = Scorer(options.pop("engine"), options.pop("regressor"), **options)
            scorer.open()
            self._scorer = scorer
        return self._scorer

    def __call__(self, batch: pa.Table) -> pa.Table:
        from heke_runtime.corpus_store import rows_table

        scorer = self._load()
        rows = [self._row(scorer, item) for item in batch.to_pylist()]
        return rows_table(rows)

    def _row(self, scorer: Scorer, item: dict[str, Any]) -> dict[str, Any]:
        result = score_prepared(scorer, item["path"], item["payload"], item["prep_error"])
        result = dataclasses.replace(result, elapsed_s=result.elapsed_s + item["prep_s"])
        return row_from_record(
            result.to_dict(),
            video_id=item["id"],
            label=item["label"],
            run_id=self.config["run_id"],
        )


def score_prepared(
    scorer: Scorer, path: str, payload: bytes | None, prep_error: str | None
) -> VideoResult:
    """``Scorer.score`` for a video a decode task prepared; errors become error results.

    ``elapsed_s`` counts this step only (the caller adds the decode time).
    """
    start = time.perf_counter()
    try:
        if prep_error is not None:
            return _failed(scorer, path, prep_error, start)
        return result_from_prepared(scorer, path, pickle.loads(payload or b""), start)
    except Exception as exc:  # as Scorer.score: one bad video never stops the actor
        return _failed(scorer, path, error_reason(exc, path), start)


def _failed(scorer: Scorer, path: str, reason: str, start: float) -> VideoResult:
    result = failed(path, reason, elapsed_s=time.perf_counter() - start)
    return dataclasses.replace(result, engine=scorer._engine_meta())


def result_from_prepared(
    scorer: Scorer, path: str, prepared: Prepared, start: float
) -> VideoResult:
    """The second half of ``Scorer._score`` (everything after ``load_clips``), from the
    Scorer's own helpers. Kept in step with it by the record-equality test; a
    ``Scorer.result_from(path, loaded, info, plan, warnings)`` split would replace it."""
    inputs = _named_inputs(scorer.model, prepared.loaded)
    heads, features = scorer._run(inputs)
    if not (np.isfinite(heads).all() and np.isfinite(features).all()):
        raise ScorerError(f"the engine returned NaN/Inf for this video ({scorer.device})")
    per_snippet = heads.astype(np.float64)
    reg = scorer.regressor.snippet_scores(features) if scorer.regressor else None
    video = _video_meta(prepared.info)
    return VideoResult(
        path=str(path),
        status="ok",
        scores=_summary(per_snippet, reg, np.mean),
        spread=_summary(per_snippet, reg, _spread),
        snippets=_snippets(per_snippet, reg, prepared.plan, prepared.info),
        video=video,
        sampling=scorer._sampling(video, next(iter(inputs.values())).shape),
        engine=scorer._engine_meta(),
        regressor=scorer._regressor_meta(),
        demo_weights=scorer.sidecar.demo_weights,
        warnings=prepared.warnings,
        elapsed_s=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- the dataset


def build_dataset(
    ray: ModuleType, todo: pa.Table, config: dict[str, Any], plan: ComputePlan
) -> Any:
    """``todo`` (rows of :data:`INPUT_SCHEMA`) -> decode tasks -> actor pool -> record rows.

    The two stages take different Ray options, which also keeps Ray Data from fusing the
    decode into the actors (decoding must scale with CPUs, not with engines).
    """
    if todo.num_rows == 0:
        raise CorpusError("nothing to score")  # callers skip the pipeline instead
    step = plan.rows_per_block
    blocks = [todo.slice(i, step) for i in range(0, todo.num_rows, step)]
    scorer = config["scorer"]
    with _retry_arguments_allowed():
        prepared = ray.data.from_arrow(blocks).map_batches(
            prepare_batch,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={
                "model": config["model"],
                "num_snippets": scorer["num_snippets"],
                "size": scorer.get("size"),
            },
            num_cpus=plan.decode_cpus,
            # Retries of a task whose worker or node died (each lost output rebuilt also
            # counts); bounded, so a video that crashes its decoder every time stops the run.
            max_retries=plan.max_retries,
        )
        return prepared.map_batches(
            InferActor,
            batch_size=plan.videos_per_call,
            batch_format="pyarrow",
            fn_constructor_kwargs={"config": config},
            compute=ray.data.ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.max_actors),
            num_cpus=plan.actor_cpus,
            num_gpus=plan.actor_gpus,
            # Ray Data's actor defaults are what we need: max_restarts=-1 (a dead actor
            # comes back, elsewhere if its node is gone) and max_task_retries=-1 (its
            # batches wait for it: a bound would be spent in the second it takes to restart).
        )


@contextlib.contextmanager
def _retry_arguments_allowed() -> Iterator[None]:
    """Ray 2.60 deprecates retry options in ``map_batches`` in favour of its defaults, which
    retry forever: a video that crashes its decoder would then hang the run. We keep the
    bound and silence only that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
        yield
