"""The Ray Data stages of a corpus run: manifest rows, decode tasks, the inference actors.

Everything a stage needs travels as plain data (paths, numbers, dicts); each actor builds
its own :class:`Scorer` from that on its first batch, so an engine loads once per actor and
never crosses the network. Decoding and preprocessing up to the integer block sums run as
ordinary CPU tasks (retried by Ray when a worker or node dies); the float32 normalisation,
which would double the bytes crossing Ray's object store or more, runs in the actor pool
with inference, the regressor and the record. Per-video errors never escape a stage: they
become error records, as with ``Scorer``.

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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from heke_corpus.store import row_from_record, video_id
from heke_runtime.errors import HekeError
from heke_runtime.pipeline import (
    DecodeTimeoutError,
    abandoned_calls,
    call_with_timeout,
    timeout_reason,
)
from heke_runtime.results import VideoResult
from heke_runtime.scorer import DecodedVideo, Scorer, decode_video, error_reason, named_inputs
from heke_runtime.yuv import RAW_DEFAULT, RawSize

INPUT_SCHEMA = pa.schema([("id", pa.string()), ("path", pa.string()), ("label", pa.float64())])
PREPARED_FIELDS = [
    ("decoded", pa.binary()),  # pickled DecodedVideo without its array; null on failure
    ("tensor", pa.large_binary()),  # the array's bytes: the block sums (see pack_decoded)
    ("prep_error", pa.string()),
    ("prep_s", pa.float64()),
]


# Hung decodes a worker process may hold before its tasks fail their videos unread (as
# heke_runtime.pipeline with one decoder: one replaced, then the rest fail).
MAX_ABANDONED = 2


class DecodeStageError(HekeError):
    """Why a decode task could not prepare a video (its one-line reason, carried across)."""


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
    """Manifest rows as :data:`INPUT_SCHEMA` plus ``problem`` (null for a good row): paths
    made absolute from the manifest's folder (every worker must see the same path), ids as
    text (the hash of the path when absent), labels as numbers. Runs in Ray Data tasks, so
    a bad row is reported in ``problem`` rather than raised (Ray would bury the message)."""
    names = set(batch.column_names)
    count = batch.num_rows
    raw_paths = batch.column("path").to_pylist()
    raw_ids = batch.column("id").to_pylist() if "id" in names else [None] * count
    raw_labels = batch.column("label").to_pylist() if "label" in names else [None] * count
    paths, labels, problems = [], [], []
    for path, label in zip(raw_paths, raw_labels):
        text = "" if path is None else str(path).strip()
        number, problem = _number(label)
        problems.append("empty path" if not text else problem)
        paths.append(_absolute(text, base) if text else "")
        labels.append(number)
    ids = [None if i is None or str(i).strip() == "" else str(i).strip() for i in raw_ids]
    table = input_rows(paths, ids, labels)
    return table.append_column("problem", pa.array(problems, pa.string()))


def _number(value: Any) -> tuple[float | None, str | None]:
    """A label as a float (blank: none), or why it is not a number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    try:
        return float(value), None
    except (TypeError, ValueError):
        return None, f"label {value!r} is not a number"


def _absolute(path: str, base: str) -> str:
    text = os.path.expanduser(path)
    return os.path.normpath(text if os.path.isabs(text) else os.path.join(base, text))


def missing_in(ids: pa.Array, present: pa.Array) -> pa.Array:
    """Ids of ``ids`` that are not in ``present``."""
    return ids.filter(pc.invert(pc.is_in(ids, value_set=present)))


# --------------------------------------------------------------------------- decode tasks


def prepare_batch(
    batch: pa.Table,
    *,
    model: str,
    num_snippets: int,
    size: list[int] | None,
    timeout_s: float | None = None,
    decoding: Mapping[str, str] | None = None,
) -> pa.Table:
    """Decode and preprocess each video of ``batch``; failures become ``prep_error``.

    ``decoding``: heke-run's decode options (``pix_fmt`` of raw inputs, ``on_damage``,
    ``hdr``; their defaults when absent).

    With ``timeout_s``, a video whose decoding takes longer gets heke-run's ``--timeout``
    reason and the task goes on. Its decode runs on in an abandoned daemon thread, which may
    keep a core of this Ray worker busy until FFmpeg returns; once :data:`MAX_ABANDONED` are
    still running in the worker process, its videos fail unread instead of piling up more.
    """
    metas: list[bytes | None] = []
    tensors: list[pa.Array] = []
    errors: list[str | None] = []
    seconds: list[float] = []
    how = dict(decoding or {})
    pix_fmt = how.pop("pix_fmt", RAW_DEFAULT)
    dims = RawSize(int(size[0]), int(size[1]), pix_fmt) if size else None
    for path in batch.column("path").to_pylist():
        start = time.perf_counter()
        meta, tensor, error = None, pa.py_buffer(b""), None
        try:
            sums = _decode(path, model, num_snippets, dims, timeout_s, how)
            meta, tensor = pack_decoded(sums)
        except Exception as exc:  # one bad file must not stop a batch (as in Scorer.score)
            error = error_reason(exc, path)
        metas.append(meta)
        tensors.append(_one_binary(tensor))
        errors.append(error)
        seconds.append(time.perf_counter() - start)
    columns = [pa.array(metas, pa.binary()), pa.chunked_array(tensors, pa.large_binary())]
    columns += [pa.array(errors, pa.string()), pa.array(seconds, pa.float64())]
    for (name, kind), column in zip(PREPARED_FIELDS, columns):
        batch = batch.append_column(pa.field(name, kind), column)
    return batch


def _decode(
    path: str,
    model: str,
    num_snippets: int,
    dims: tuple[int, int] | None,
    limit: float | None,
    how: Mapping[str, Any],
) -> DecodedVideo:
    """``decode_video(..., sums_only=True)`` with ``how`` (``on_damage``, ``hdr``), given up
    on after ``limit`` seconds."""
    if limit is None:  # no thread: nothing to give up on
        return decode_video(path, model, num_snippets, dims, sums_only=True, **how)
    stuck = abandoned_calls()
    if stuck >= MAX_ABANDONED:
        raise DecodeTimeoutError(
            f"skipped unread: {stuck} earlier files still decode past --timeout in this Ray worker"
        )
    # The copy of a stream stops at the same limit (heke_runtime.sources), not at run exit.
    return call_with_timeout(
        lambda: decode_video(
            path, model, num_snippets, dims, sums_only=True, deadline_s=limit, **how
        ),
        limit,
        timeout_reason(limit),
    )


def finish_decoded(decoded: DecodedVideo, model: str) -> DecodedVideo:
    """A ``decode_video(..., sums_only=True)`` video with :func:`decode_video`'s inputs, bit
    for bit. Normalising here, not in the decode task, halves or quarters the bytes that
    cross Ray's object store (its cost per video)."""
    from heke_runtime.preprocess import inputs_from_sums

    made = inputs_from_sums(decoded.inputs["sums"], decoded.plan, decoded.info, model)
    return dataclasses.replace(decoded, inputs=named_inputs(model, made))


def pack_decoded(decoded: DecodedVideo) -> tuple[bytes, pa.Buffer]:
    """A video of one array as (small pickle, raw buffer wrapping the array without a copy),
    so Ray copies the array once: into its object store. Pickling it would cost four."""
    ((name, array),) = decoded.inputs.items()
    array = np.ascontiguousarray(array)
    bare = dataclasses.replace(decoded, inputs={})
    return pickle.dumps((bare, name, array.shape, array.dtype.str), protocol=5), pa.py_buffer(array)


def unpack_decoded(meta: bytes, tensor: pa.Buffer) -> DecodedVideo:
    """The inverse of :func:`pack_decoded`; the array is a read-only view of ``tensor``."""
    bare, name, shape, dtype = pickle.loads(meta)
    return dataclasses.replace(bare, inputs={name: np.frombuffer(tensor, dtype).reshape(shape)})


def _one_binary(data: pa.Buffer) -> pa.Array:
    """A one-value large_binary array over ``data``, without copying it."""
    offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int64))
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1, [None, offsets, data])


def binary_values(column: pa.ChunkedArray) -> list[pa.Buffer]:
    """The values of a large_binary column as zero-copy buffers (``as_buffer`` copies)."""
    values = []
    for chunk in column.chunks:
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)
        data = chunk.buffers()[2] or pa.py_buffer(b"")
        for i in range(chunk.offset, chunk.offset + len(chunk)):
            values.append(data.slice(int(offsets[i]), int(offsets[i + 1] - offsets[i])))
    return values


# --------------------------------------------------------------------------- inference actor


class InferActor:
    """One engine per actor, loaded on the first batch it receives.

    ``config`` is plain data: the ``Scorer`` arguments plus ``run_id``. A batch of prepared
    rows comes back as record rows (:data:`heke_corpus.store.ROW_SCHEMA`).
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
        from heke_corpus.store import rows_table

        scorer = self._load()
        tensors = binary_values(batch.column("tensor"))  # read in place, never copied
        items = batch.drop_columns(["tensor"]).to_pylist()
        return rows_table([self._row(scorer, item, t) for item, t in zip(items, tensors)])

    def _row(self, scorer: Scorer, item: dict[str, Any], tensor: pa.Buffer) -> dict[str, Any]:
        result = score_prepared(scorer, item["path"], item["decoded"], tensor, item["prep_error"])
        result = dataclasses.replace(result, elapsed_s=result.elapsed_s + item["prep_s"])
        return row_from_record(
            result.to_dict(),
            video_id=item["id"],
            label=item["label"],
            run_id=self.config["run_id"],
        )


def score_prepared(
    scorer: Scorer, path: str, meta: bytes | None, tensor: pa.Buffer, prep_error: str | None
) -> VideoResult:
    """``Scorer.score`` for a video a decode task prepared: the Scorer's own inference,
    result and failure steps. ``elapsed_s`` counts this step only (the caller adds the
    decode time)."""
    start = time.perf_counter()
    try:
        if prep_error is not None or meta is None:
            raise DecodeStageError(prep_error or "the decode task sent nothing")
        decoded = finish_decoded(unpack_decoded(meta, tensor), scorer.model)
        return scorer.result(decoded, scorer.infer(decoded.inputs), start)
    except Exception as exc:  # as Scorer.score: one bad video never stops the actor
        return scorer.failure(path, exc, start)


# --------------------------------------------------------------------------- the dataset


def build_dataset(
    ray: ModuleType, todo: pa.Table, config: dict[str, Any], plan: ComputePlan
) -> Any:
    """``todo`` (rows of :data:`INPUT_SCHEMA`) -> decode tasks -> actor pool -> record rows.

    The two stages take different Ray options, which also keeps Ray Data from fusing the
    decode into the actors (decoding must scale with CPUs, not with engines).
    """
    if todo.num_rows == 0:
        raise ValueError("build_dataset needs rows; callers skip the pipeline when none")
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
                "timeout_s": config.get("timeout_s"),
                "decoding": config.get("decoding"),
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
