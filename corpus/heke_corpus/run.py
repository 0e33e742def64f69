"""Score a whole corpus on a Ray cluster: resumable, nothing lost, nothing scored twice.

:func:`run_corpus` is what ``heke-corpus`` calls. Ray Data reads the manifest (CSV, Parquet
or JSON lines of ``path`` and optional ``id`` and ``label``; paths on a filesystem every
worker sees), decode tasks prepare each video on any CPU, an actor pool runs the engine (one
per GPU, or ONNX Runtime on CPU nodes) and the regressor, and the driver commits the records
as Parquet parts (``heke_corpus.store``), then compacts them into one file set.

Guarantees, and what gives them:

* A bad file is an error record (as with ``Scorer``); a dead worker, actor or node is
  retried by Ray (decode tasks ``max_retries``; actors ``max_restarts=-1`` and
  ``max_task_retries=-1``, Ray Data's defaults).
* Nothing half-written: parts are renamed into place once whole; a killed driver loses only
  records it had not committed, and ``--resume`` scores exactly those again.
* Nothing twice: inputs are de-duplicated by id before the run, the driver drops an id Ray
  might hand it twice, and compaction keeps one row per id (the final guarantee). At the
  end every input's id is checked against the compacted results.

Ray is an optional extra: nothing here imports it (or pyarrow) until a run starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from heke_runtime.decode import ON_DAMAGE_CHOICES, OnDamage
from heke_runtime.errors import HekeError
from heke_runtime.hdr import DEFAULT_HDR, HDR_CHOICES, HdrMode
from heke_runtime.results import OutputError, VideoResult
from heke_runtime.scorer import InputItem, Scorer, expand_inputs
from heke_runtime.yuv import RAW_DEFAULT, check_raw_pix_fmt

if TYPE_CHECKING:
    import pyarrow as pa

    from heke_corpus.pipeline import ComputePlan
    from heke_corpus.store import PartWriter

Device = Literal["auto", "cpu", "gpu"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")
MANIFEST_SUFFIXES: tuple[str, ...] = (".csv", ".parquet", ".jsonl")
RAY_EXTRA = "pip install 'heke[ray]'"
BLOCKS_PER_CPU = 4  # enough input blocks that every CPU has work queued behind it


class CorpusError(OutputError):
    """A corpus run cannot start, read its inputs, or keep its output consistent."""


class CorpusUsageError(CorpusError):
    """The invocation is wrong: options, manifest, output folder (the CLI exits 2)."""


class RayUnavailableError(CorpusError, ImportError):
    """Ray Data (the ``ray`` extra) is not installed."""


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data loaded, or an error that names the extra."""
    try:
        import pyarrow  # noqa: F401  (Ray Data needs it; say so here, not mid-run)
        import ray
        import ray.data
    except ImportError as exc:
        raise RayUnavailableError(
            f"heke-corpus needs Ray Data, which is not importable ({exc}); {RAY_EXTRA}"
        ) from None
    return ray


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class CorpusOptions:
    """How to score (as ``Scorer``) and how to lay the run out on the cluster.

    ``actors``: a fixed pool size; default one per GPU, or 1 up to ``CPUs // 2`` CPU actors
    (Ray Data grows the pool while work waits). ``videos_per_task`` caps the videos in one
    decode task (fewer when the corpus is small, so every CPU gets work). Records are
    committed every ``flush_rows`` records or ``flush_s`` seconds, whichever comes first.
    ``timeout_s`` gives up on a video whose decoding takes longer (an error record, as
    heke-run's ``--timeout``; see :func:`heke_corpus.pipeline.prepare_batch`).
    """

    regressor: str | None = None
    num_snippets: int | None = None
    batch_size: int | None = None  # None: each actor's backend picks, as in heke-run
    backend: str | None = None
    size: tuple[int, int] | None = None
    address: str | None = None
    device: Device = "auto"
    actors: int | None = None
    actor_cpus: float = 1.0
    decode_cpus: float = 1.0
    videos_per_task: int = 16
    videos_per_call: int = 1
    max_retries: int = 5
    run_id: str | None = None
    resume: bool = False
    overwrite: bool = False
    jsonl: bool = False
    flush_rows: int = 1000
    flush_s: float = 30.0
    timeout_s: float | None = None
    pix_fmt: str = RAW_DEFAULT  # of raw .yuv inputs, as heke-run --pix-fmt
    on_damage: OnDamage = "fail"  # as heke-run --on-damage
    hdr: HdrMode = DEFAULT_HDR  # as heke-run --hdr

    def __post_init__(self) -> None:
        self._check_decoding()
        if self.device not in DEVICES:
            raise CorpusUsageError(f"device {self.device!r}; valid: {', '.join(DEVICES)}")
        if self.resume and self.overwrite:
            raise CorpusUsageError("--resume and --overwrite contradict each other; pick one")
        positive = {
            "actors": self.actors,
            "videos_per_task": self.videos_per_task,
            "videos_per_call": self.videos_per_call,
            "flush_rows": self.flush_rows,
        }
        for name, value in positive.items():
            if value is not None and value < 1:
                raise CorpusUsageError(f"{name} must be at least 1, got {value}")
        for name, number in {
            "actor_cpus": self.actor_cpus,
            "decode_cpus": self.decode_cpus,
        }.items():
            if not number > 0:
                raise CorpusUsageError(f"{name} must be above 0, got {number}")
        if self.timeout_s is not None and not self.timeout_s > 0:  # also refuses nan
            raise CorpusUsageError(
                f"timeout_s must be more than 0 seconds (or None), got {self.timeout_s}"
            )
        if self.max_retries < -1:
            raise CorpusUsageError(
                f"max_retries must be -1 (forever) or more, got {self.max_retries}"
            )

    def _check_decoding(self) -> None:
        """The decode options heke-run shares, refused with heke-run's words."""
        try:
            check_raw_pix_fmt(self.pix_fmt)
        except ValueError as exc:
            raise CorpusUsageError(str(exc)) from None
        if self.on_damage not in ON_DAMAGE_CHOICES:
            raise CorpusUsageError(
                f"--on-damage {self.on_damage!r}: expected one of {', '.join(ON_DAMAGE_CHOICES)}"
            )
        if self.hdr not in HDR_CHOICES:
            raise CorpusUsageError(f"--hdr {self.hdr!r}: expected one of {', '.join(HDR_CHOICES)}")


@dataclass(frozen=True)
class RunInfo:
    """What a run is about to do (given to ``on_start``)."""

    run_id: str
    description: str
    inputs: int
    todo: int
    skipped: int
    duplicates: int
    dashboard_url: str | None


@dataclass(frozen=True)
class CorpusSummary:
    """What a run did. ``missing`` lists input ids without a record (always empty unless
    Ray lost work without saying so; then ``--resume`` scores them)."""

    run_id: str
    output: Path
    inputs: int
    skipped: int
    scored: int
    failed: int
    duplicates: int
    records: int
    missing: tuple[str, ...]
    elapsed_s: float
    dashboard_url: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.missing


@dataclass
class _Tally:
    """The driver's view of the records this run wrote."""

    written: set[str] = field(default_factory=set)
    scored: int = 0
    failed: int = 0
    dropped: int = 0


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


# --------------------------------------------------------------------------- the run


def run_corpus(
    inputs: Sequence[str],
    engine: str | Path,
    output: str | Path,
    *,
    manifest: str | Path | None = None,
    options: CorpusOptions | None = None,
    on_start: Callable[[RunInfo], None] | None = None,
    on_result: Callable[[VideoResult], None] | None = None,
) -> CorpusSummary:
    """Score ``inputs`` (as ``heke-run`` takes them) and the ``manifest``'s rows into
    ``output``; see the module docstring. Connects to ``options.address`` (or starts a local
    Ray) unless Ray is already initialised in this process; shuts down only what it started.
    """
    options = options or CorpusOptions()
    ray = require_ray()
    from heke_corpus import store

    start = time.perf_counter()
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise CorpusUsageError(f"{folder}: exists and is not a folder; give an output folder")
    run_id = store.check_run_id(options.run_id or new_run_id())
    if manifest is not None:
        check_manifest(Path(manifest))
    scorer = _driver_scorer(Path(engine), options)
    with store.output_lock(folder):
        _prepare_output(folder, options)
        with _ray_session(ray, options.address) as dashboard, _quiet_ray_data(ray):
            work = _gather(ray, inputs, manifest, folder, options.resume)
            plan = compute_plan(ray, scorer, options, work.todo.num_rows)
            _write_run_file(folder, run_id, _asked(engine, manifest, options, plan))
            if on_start is not None:
                on_start(_run_info(scorer, plan, run_id, work, dashboard))
            tally = _score_all(ray, scorer, work, folder, run_id, options, on_result, plan)
        records = store.compact(folder, jsonl=options.jsonl)
        missing = _missing(folder, work.all_ids)
    summary = CorpusSummary(
        run_id=run_id,
        output=folder,
        inputs=work.count,
        skipped=work.skipped,
        scored=tally.scored,
        failed=tally.failed,
        duplicates=work.duplicates + tally.dropped,
        records=records,
        missing=missing,
        elapsed_s=time.perf_counter() - start,
        dashboard_url=dashboard,
    )
    _write_run_file(folder, run_id, {"finished": True, **_summary_dict(summary)})
    return summary


def _driver_scorer(engine: Path, options: CorpusOptions) -> Scorer:
    """Checks engine, sidecar and regressor on the driver (never loads the engine), so a
    wrong file fails before the cluster is involved."""
    if not engine.is_file():
        raise CorpusUsageError(f"--engine {engine}: no such file")
    return Scorer(
        engine,
        options.regressor,
        num_snippets=options.num_snippets,
        batch_size=options.batch_size,
        backend=options.backend,
        size=options.size,
    )


def _prepare_output(folder: Path, options: CorpusOptions) -> None:
    from heke_corpus import store

    if options.overwrite:
        store.clear_output(folder)
    elif store.holds_results(folder) and not options.resume:
        raise CorpusUsageError(
            f"{folder} already holds results; pass --resume to continue it or --overwrite "
            "to replace it"
        )


@contextlib.contextmanager
def _ray_session(ray: ModuleType, address: str | None) -> Iterator[str | None]:
    """Connect (or start a local Ray); yields the dashboard URL when there is one."""
    if ray.is_initialized():
        yield None
        return
    try:
        context = ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a new local Ray"
        raise CorpusError(f"cannot start or reach Ray ({where}): {exc}") from None
    try:
        yield getattr(context, "dashboard_url", None) or None
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _quiet_ray_data(ray: ModuleType) -> Iterator[None]:
    """Our progress replaces Ray Data's bars and INFO lines for the length of a run."""
    context = ray.data.DataContext.get_current()
    # INFO lines of Ray Data; and its note that we turned its bars off.
    levels = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    saved = {logger: logger.level for logger in loggers}
    bars = context.enable_progress_bars
    context.enable_progress_bars = False
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        yield
    finally:
        context.enable_progress_bars = bars
        for logger, level in saved.items():
            logger.setLevel(level)


@dataclass(frozen=True)
class _Inputs:
    """The inputs of a run, de-duplicated, minus what earlier runs finished."""

    todo: pa.Table  # rows (id, path, label) to score
    bad: list[InputItem]  # command-line inputs that named nothing: error records
    all_ids: pa.Array  # every input id, done or not (checked against the results)
    skipped: int
    duplicates: int

    @property
    def count(self) -> int:
        return len(self.all_ids)


def _gather(
    ray: ModuleType,
    inputs: Sequence[str],
    manifest: str | Path | None,
    folder: Path,
    resume: bool,
) -> _Inputs:
    from heke_corpus import store

    table, bad = _load_inputs(ray, inputs, manifest)
    unique, duplicates = _dedupe(table)
    all_ids = _all_ids(unique, bad)
    if resume:
        done = store.done_ids(folder)
        todo = _drop_done(unique, done)
        bad = [item for item in bad if not _is_done(item, done)]
    else:
        todo = unique
    return _Inputs(todo, bad, all_ids, unique.num_rows - todo.num_rows, duplicates)


def _score_all(
    ray: ModuleType,
    scorer: Scorer,
    work: _Inputs,
    folder: Path,
    run_id: str,
    options: CorpusOptions,
    on_result: Callable[[VideoResult], None] | None,
    plan: ComputePlan,
) -> _Tally:
    """Write the input errors, then stream every todo row through the cluster."""
    from heke_corpus import pipeline, store

    writer = store.PartWriter(folder / store.RUNS_DIR / run_id, flush_rows=options.flush_rows)
    tally = _Tally()
    try:
        _write_input_errors(work.bad, writer, tally, run_id, on_result)
        if work.todo.num_rows:
            dataset = pipeline.build_dataset(
                ray, work.todo, _actor_config(scorer, plan, run_id, options), plan
            )
            _stream(dataset, writer, tally, options.flush_s, on_result)
    except HekeError:
        raise
    except Exception as exc:  # Ray gave up (retries spent); what is committed stays
        saved = writer.rows_committed + writer.rows_waiting
        raise CorpusError(
            f"the Ray run stopped: {_root_cause(exc)}; {saved} records of this run are saved "
            f"in {folder}; rerun with --resume to finish"
        ) from None
    finally:
        writer.flush()  # every record received is whole: commit it, even on Ctrl-C
    return tally


# --------------------------------------------------------------------------- inputs


def _load_inputs(
    ray: ModuleType, inputs: Sequence[str], manifest: str | Path | None
) -> tuple[pa.Table, list[InputItem]]:
    """Rows (id, path, label) of everything named, and the command-line inputs that named
    nothing scorable (they become error records, as in heke-run)."""
    import pyarrow as pa

    from heke_corpus.pipeline import INPUT_SCHEMA, input_rows

    items = expand_inputs(list(inputs)) if inputs else []
    good = [os.path.abspath(item.path) for item in items if item.error is None]
    tables = [input_rows(good, [None] * len(good), [None] * len(good))]
    if manifest is not None:
        tables.append(read_manifest(ray, Path(manifest)))
    table = pa.concat_tables(tables).cast(INPUT_SCHEMA)
    return table, [item for item in items if item.error is not None]


def check_manifest(manifest: Path) -> None:
    suffix = manifest.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise CorpusUsageError(
            f"--manifest {manifest}: unknown format {suffix or '(none)'!r}; "
            f"valid: {', '.join(MANIFEST_SUFFIXES)}"
        )
    if not manifest.is_file():
        raise CorpusUsageError(f"--manifest {manifest}: no such file")


def read_manifest(ray: ModuleType, manifest: Path) -> pa.Table:
    """Ray Data reads the manifest (in parallel for big ones); rows come back normalised."""
    import pyarrow as pa

    from heke_corpus.pipeline import INPUT_SCHEMA, normalise_manifest

    check_manifest(manifest)
    # abspath, not resolve(): ids hash the path as written, as for command-line inputs.
    suffix, path = manifest.suffix.lower(), os.path.abspath(manifest)
    readers: dict[str, Callable[[], Any]] = {
        ".csv": lambda: ray.data.read_csv(path),
        ".parquet": lambda: ray.data.read_parquet(path),
        ".jsonl": lambda: ray.data.read_json(path, lines=True),
    }
    try:
        dataset = readers[suffix]()
        schema = dataset.schema()
        if schema is None:  # no rows at all
            return INPUT_SCHEMA.empty_table()
        if "path" not in schema.names:
            raise CorpusUsageError(
                f"--manifest {manifest}: no 'path' column (columns: {', '.join(schema.names)})"
            )
        rows = dataset.map_batches(
            normalise_manifest,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={"base": os.path.dirname(path)},
        )
        batches = list(rows.iter_batches(batch_format="pyarrow", batch_size=None))
    except HekeError:
        raise
    except Exception as exc:  # Ray could not read it at all
        raise CorpusError(f"--manifest {manifest}: {_root_cause(exc)}") from None
    if not batches:
        return INPUT_SCHEMA.empty_table()
    table = pa.concat_tables(batches)
    bad = table.filter(table.column("problem").is_valid())
    if bad.num_rows:
        row = bad.slice(0, 1).to_pylist()[0]
        raise CorpusUsageError(
            f"--manifest {manifest}: {bad.num_rows} bad rows, e.g. the row of path "
            f"{row['path'] or '(empty)'!r}: {row['problem']}"
        )
    return table.drop_columns(["problem"])


def _ours(exc: BaseException) -> HekeError | None:
    """Our error inside one that Ray wrapped around it, if it is ours."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, HekeError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


def _root_cause(exc: BaseException) -> str:
    """One line for an error Ray wrapped (ours when it is ours)."""
    ours = _ours(exc)
    if ours is not None:
        return str(ours)
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}"


def _dedupe(table: pa.Table) -> tuple[pa.Table, int]:
    """One row per id, first one kept, in input order; an id naming two paths is an error."""
    import pyarrow.compute as pc

    from heke_corpus.store import first_rows

    paths = table.group_by("id").aggregate([("path", "count_distinct")])
    clash = paths.filter(pc.greater(paths.column("path_count_distinct"), 1)).column("id")
    if len(clash):
        raise CorpusUsageError(
            f"{len(clash)} ids name more than one path (ids must be unique), e.g. "
            f"{', '.join(clash.slice(0, 3).to_pylist())}"
        )
    first = first_rows(table.column("id"))
    keep = pc.take(first, pc.sort_indices(first))  # input order
    return table.take(keep), table.num_rows - len(keep)


def _drop_done(table: pa.Table, done: pa.Array) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.invert(pc.is_in(table.column("id"), value_set=done)))


def _is_done(item: InputItem, done: pa.Array) -> bool:
    import pyarrow.compute as pc

    from heke_corpus.store import video_id

    return bool(pc.is_in(video_id(item.path), value_set=done).as_py())


def _all_ids(unique: pa.Table, bad: list[InputItem]) -> pa.Array:
    import pyarrow as pa

    from heke_corpus.store import video_id

    extra = pa.array([video_id(item.path) for item in bad], pa.string())
    return pa.concat_arrays([unique.column("id").combine_chunks(), extra])


# --------------------------------------------------------------------------- layout


def compute_plan(
    ray: ModuleType, scorer: Scorer, options: CorpusOptions, videos: int
) -> ComputePlan:
    """Where the stages run: one actor per GPU when the cluster has GPUs (or ``device``
    says so), else ONNX Runtime actors on CPUs; decode tasks everywhere."""
    from heke_corpus.pipeline import ComputePlan

    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    device = options.device if options.device != "auto" else ("gpu" if gpus else "cpu")
    if device == "gpu" and not gpus:
        raise CorpusError("--device gpu: the Ray cluster has no GPUs")
    backend = _backend(scorer, options.backend, device)
    if cpus < options.decode_cpus + (options.actor_cpus if device == "cpu" else 0):
        raise CorpusError(
            f"the Ray cluster has {cpus:g} CPUs: too few for one decode task "
            f"({options.decode_cpus:g} CPUs) beside one CPU actor ({options.actor_cpus:g}); "
            "lower --decode-cpus/--actor-cpus"
        )
    most = options.actors or (gpus if device == "gpu" else max(1, int(cpus // 2)))
    blocks = BLOCKS_PER_CPU * max(1, int(cpus))
    return ComputePlan(
        device=device,
        backend=backend,
        min_actors=options.actors or (most if device == "gpu" else 1),
        max_actors=most,
        actor_cpus=options.actor_cpus,
        actor_gpus=1.0 if device == "gpu" else 0.0,
        decode_cpus=options.decode_cpus,
        rows_per_block=max(1, min(options.videos_per_task, math.ceil(videos / blocks))),
        videos_per_call=options.videos_per_call,
        max_retries=options.max_retries,
    )


def _backend(scorer: Scorer, asked: str | None, device: str) -> str:
    """The backend actors use. An automatic backend (``onnxruntime``, ``torch``) is named
    with the device's variant, so a GPU build on a CPU node cannot pick CUDA behind our
    back, and a GPU actor never runs quietly on its CPU."""
    from heke_runtime.backends import BACKENDS

    if asked is not None:
        return scorer.backend_name
    if scorer.backend_name == "tensorrt" and device == "cpu":
        raise CorpusError(f"{scorer.engine_path.name} is a TensorRT engine; it needs GPUs")
    variant = f"{scorer.backend_name}-{'cuda' if device == 'gpu' else 'cpu'}"
    return variant if variant in BACKENDS else scorer.backend_name


def _actor_config(
    scorer: Scorer, plan: ComputePlan, run_id: str, options: CorpusOptions
) -> dict[str, Any]:
    """Everything an actor needs, as plain data. The batch size is the one asked for, else
    the actor's backend's default (the driver's backend may differ: a CPU driver, GPU actors),
    so records equal heke-run's with the same engine and backend."""
    regressor = scorer.regressor.source if scorer.regressor is not None else None
    threads = max(1, round(plan.actor_cpus)) if plan.device == "cpu" else None
    return {
        "run_id": run_id,
        "model": scorer.model,
        "timeout_s": options.timeout_s,  # for the decode tasks, as the three below
        "decoding": {
            "pix_fmt": options.pix_fmt,
            "on_damage": options.on_damage,
            "hdr": options.hdr,
        },
        "scorer": {
            "engine": str(scorer.engine_path.resolve()),
            "regressor": str(Path(regressor).resolve()) if regressor else None,
            "num_snippets": scorer.num_snippets,
            "batch_size": options.batch_size,
            "backend": plan.backend,
            "size": list(scorer.size) if scorer.size else None,
            "threads": threads,
        },
    }


def _run_info(
    scorer: Scorer, plan: ComputePlan, run_id: str, work: _Inputs, dashboard: str | None
) -> RunInfo:
    side = scorer.sidecar
    weights = "DEMO weights" if side.demo_weights else f"weights {side.weights_sha256[:12]}"
    pool = str(plan.min_actors)
    if plan.max_actors != plan.min_actors:
        pool += f"-{plan.max_actors}"
    text = (
        f"{scorer.engine_path.name}: {side.model} {side.precision}, {weights}; "
        f"{scorer.num_snippets} snippets per video; {pool} {plan.device.upper()} actor(s) "
        f"({plan.backend}); decode tasks of {plan.decode_cpus:g} CPU; run {run_id}"
    )
    todo = work.todo.num_rows + len(work.bad)
    return RunInfo(run_id, text, work.count, todo, work.skipped, work.duplicates, dashboard)


# --------------------------------------------------------------------------- writing


def _write_input_errors(
    bad: list[InputItem],
    writer: PartWriter,
    tally: _Tally,
    run_id: str,
    on_result: Callable[[VideoResult], None] | None,
) -> None:
    """Inputs that named nothing become error records (no engine was involved)."""
    from heke_corpus.store import row_from_record, rows_table, video_id
    from heke_runtime.results import failed

    for item in bad:
        result = failed(item.path, item.error or "not a video")
        row = row_from_record(
            result.to_dict(), video_id=video_id(item.path), label=None, run_id=run_id
        )
        _take(rows_table([row]), writer, tally, on_result)


def _stream(
    dataset: Any,
    writer: PartWriter,
    tally: _Tally,
    flush_s: float,
    on_result: Callable[[VideoResult], None] | None,
) -> None:
    """Pull record blocks as the actors finish them; commit on size or on a timer."""
    last = time.monotonic()
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        _take(batch, writer, tally, on_result)
        if time.monotonic() - last >= flush_s:
            writer.flush()
            last = time.monotonic()


def _take(
    batch: pa.Table,
    writer: PartWriter,
    tally: _Tally,
    on_result: Callable[[VideoResult], None] | None,
) -> None:
    """Keep rows whose id this run has not written yet (Ray may re-deliver after a retry)."""
    import pyarrow as pa

    from heke_corpus.store import record_from_row

    fresh = []
    for video in batch.column("id").to_pylist():
        fresh.append(video not in tally.written)
        tally.written.add(video)
    tally.dropped += fresh.count(False)
    kept = batch.filter(pa.array(fresh, pa.bool_()))
    writer.add(kept)
    for status in kept.column("status").to_pylist():
        tally.scored += status == "ok"
        tally.failed += status != "ok"
    if on_result is not None:
        for row in kept.to_pylist():
            on_result(VideoResult.from_dict(record_from_row(row)))


def _missing(folder: Path, ids: pa.Array) -> tuple[str, ...]:
    from heke_corpus.pipeline import missing_in
    from heke_corpus.store import result_count

    _, present = result_count(folder)
    return tuple(missing_in(ids, present).to_pylist())


def _write_run_file(folder: Path, run_id: str, update: dict[str, Any]) -> None:
    """``runs/<id>/run.json``: what the run was asked, then what it did (merged, atomic)."""
    from heke_corpus.store import RUN_FILE, RUNS_DIR
    from heke_runtime.files import atomic_write_bytes, now_utc

    path = folder / RUNS_DIR / run_id / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {"run_id": run_id}
    stamp = "finished_utc" if update.get("finished") else "started_utc"
    data.update(update, **{stamp: now_utc()})
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def _asked(
    engine: str | Path, manifest: str | Path | None, options: CorpusOptions, plan: ComputePlan
) -> dict[str, Any]:
    return {
        "engine": str(engine),
        "manifest": str(manifest) if manifest is not None else None,
        "options": dataclasses.asdict(options),
        "plan": dataclasses.asdict(plan),
    }


def _summary_dict(summary: CorpusSummary) -> dict[str, Any]:
    data = dataclasses.asdict(summary)
    data["output"], data["missing"] = str(summary.output), len(summary.missing)
    return data
