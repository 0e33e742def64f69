"""Where a corpus run keeps its records: ids, the Parquet row layout, part files, compaction.

Layout of an output folder (one run at a time holds its lock)::

    OUTPUT/results/part-00000.parquet ...   the compacted file set: one row per id
    OUTPUT/results.jsonl                    the same records as JSON lines (on request)
    OUTPUT/runs/<run id>/part-000001.parquet parts a run commits while it scores
    OUTPUT/runs/<run id>/run.json           what the run was asked to do, and its counts

A part is written under a temporary name, fsynced, then renamed: a file with a final name is
always whole, so a killed driver loses only the records it had not yet committed. Every
committed file counts as done for ``--resume``; compaction merges them all, keeps the first
row of each id (the final guarantee against a record written twice) and only then deletes
the parts it consumed. A crash at any point of compaction leaves duplicates, never a loss.

Rows hold heke-run's record (:meth:`VideoResult.to_dict`) plus ``id``, ``label`` and
``run_id``: ``scores`` and ``spread`` are structs (query ``scores.ensemble`` directly), the
other nested fields are JSON text. Needs pyarrow (the ``ray`` extra).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from heke_corpus.run import CorpusError, CorpusUsageError
from heke_runtime.results import REGRESSOR_NAME, path_key
from heke_runtime.scores import BLIND_NAMES

RESULTS_DIR = "results"
RUNS_DIR = "runs"
JSONL_NAME = "results.jsonl"
LOCK_NAME = ".heke-corpus.lock"
RUN_FILE = "run.json"
# Leftovers of an interrupted compaction: the old set moved aside (still counts as done),
# and a new set not yet in place (ignored, removed by the next compaction).
OLD_PREFIX = ".results.old-"
TMP_PREFIX = ".results.tmp-"
ROWS_PER_FILE = 100_000
ID_HEX = 20  # 80 bits: a collision among 10^9 paths has odds of about 4e-7

SCORE_NAMES: tuple[str, ...] = (*BLIND_NAMES, REGRESSOR_NAME)
SCORES_TYPE = pa.struct([(name, pa.float64()) for name in SCORE_NAMES])
JSON_FIELDS: tuple[str, ...] = ("pooled", "video", "sampling", "engine", "regressor", "snippets")
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("schema_version", pa.int64()),
        ("path", pa.string()),
        ("status", pa.string()),
        ("scores", SCORES_TYPE),
        ("spread", SCORES_TYPE),
        ("scale", pa.string()),
        ("demo_weights", pa.bool_()),
        *((name, pa.string()) for name in JSON_FIELDS),
        ("warnings", pa.list_(pa.string())),
        ("error", pa.string()),
        ("elapsed_s", pa.float64()),
        ("note", pa.string()),
        ("label", pa.float64()),
        ("run_id", pa.string()),
    ]
)
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def video_id(path: str | os.PathLike[str]) -> str:
    """The default id: a hash of the absolute, normalised path (stable across runs)."""
    return hashlib.sha256(path_key(path).encode()).hexdigest()[:ID_HEX]


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise CorpusUsageError(
            f"run id {run_id!r}: use 1-64 letters, digits, '.', '_' or '-' "
            "(it names a folder), starting with a letter or digit"
        )
    return run_id


# --------------------------------------------------------------------------- rows


def row_from_record(
    record: Mapping[str, Any], *, video_id: str, label: float | None, run_id: str
) -> dict[str, Any]:
    """A ``VideoResult.to_dict()`` record as a row of :data:`ROW_SCHEMA`."""
    row: dict[str, Any] = {"id": video_id, "label": label, "run_id": run_id}
    for name in ROW_SCHEMA.names:
        if name in row:
            continue
        value = record.get(name)
        if name in ("scores", "spread"):
            value = _score_struct(value or {})
        elif name in JSON_FIELDS and value is not None:
            value = json.dumps(value, separators=(",", ":"))
        row[name] = value
    return row


def _score_struct(scores: Mapping[str, float]) -> dict[str, float | None]:
    unknown = set(scores) - set(SCORE_NAMES)
    if unknown:  # a new score name needs a column; never drop it silently
        raise CorpusError(f"score names {sorted(unknown)} have no Parquet column")
    return {name: scores.get(name) for name in SCORE_NAMES}


def record_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`row_from_record`: heke-run's record plus id, label, run_id."""
    record: dict[str, Any] = {}
    for name in ROW_SCHEMA.names:
        value = row.get(name)
        if name in ("scores", "spread"):
            value = {k: v for k, v in (value or {}).items() if v is not None}
        elif name in JSON_FIELDS and value is not None:
            value = json.loads(value)
        elif name == "warnings":
            value = list(value or ())
        elif name == "note" and value is None:
            continue  # to_dict writes a note only for demo weights
        record[name] = value
    return record


def rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=ROW_SCHEMA)


# --------------------------------------------------------------------------- files


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the folder that holds the new name."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _synced_replacement(path: Path, mode: str) -> Iterator[IO[Any]]:
    """A file to write that takes ``path``'s place only once it is whole and on disk (a
    temporary name beside it, fsynced, renamed over it); removed if writing fails."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open(mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Write ``table`` to ``path`` through a temporary name: the final name is always whole."""
    with _synced_replacement(path, "wb") as handle:
        pq.write_table(table, handle)
    _fsync_dir(path.parent)
    return path


class PartWriter:
    """Buffers a run's rows and commits them as numbered part files.

    ``add`` commits once ``flush_rows`` rows are waiting; ``flush`` commits whatever is
    waiting (call it on a timer and at the end). Parts continue the numbering of a run folder
    that already holds some (a resumed run that reuses its run id).
    """

    def __init__(self, folder: Path, *, flush_rows: int) -> None:
        if flush_rows < 1:
            raise CorpusError(f"flush_rows must be at least 1, got {flush_rows}")
        self.folder = folder
        self.flush_rows = flush_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.stem.split("-")[1]) for p in self.folder.glob("part-*.parquet")]
        self._next = max(numbers, default=0) + 1
        self._pending: list[pa.Table] = []
        self.rows_waiting = 0
        self.rows_committed = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self._pending.append(table)
            self.rows_waiting += table.num_rows
        if self.rows_waiting >= self.flush_rows:
            self.flush()

    def flush(self) -> Path | None:
        if not self.rows_waiting:
            return None
        table = pa.concat_tables(self._pending).cast(ROW_SCHEMA)
        path = write_parquet_atomic(table, self.folder / f"part-{self._next:06d}.parquet")
        self._next += 1
        self.rows_committed += self.rows_waiting
        self._pending, self.rows_waiting = [], 0
        return path


def committed_files(output: Path) -> list[Path]:
    """Every whole record file under ``output``, oldest kind first (compaction keeps the
    first row of an id): the compacted set, a set moved aside by an interrupted compaction,
    then run parts by run folder and number."""
    files = sorted((output / RESULTS_DIR).glob("*.parquet"))
    for old in sorted(output.glob(f"{OLD_PREFIX}*")):
        files += sorted(old.glob("*.parquet"))
    return files + sorted((output / RUNS_DIR).glob("*/part-*.parquet"))


def read_ids(files: Iterable[Path]) -> pa.ChunkedArray:
    """The ``id`` column of every file, in order."""
    chunks = []
    for path in files:
        try:
            chunks.append(pq.read_table(path, columns=["id"]).column("id"))
        except (OSError, pa.ArrowException, KeyError) as exc:
            raise CorpusError(f"{path}: not a heke-corpus record file ({exc})") from None
    arrays = [chunk for column in chunks for chunk in column.chunks]
    return pa.chunked_array(arrays, type=pa.string())


def done_ids(output: Path) -> pa.Array:
    """Distinct ids that already have a committed record (what ``--resume`` skips)."""
    return pc.unique(read_ids(committed_files(output)).combine_chunks())


def holds_results(output: Path) -> bool:
    return bool(committed_files(output))


# --------------------------------------------------------------------------- lock


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """One run at a time per output folder; the OS drops the lock when its process dies,
    so a killed driver never blocks the ``--resume`` after it."""
    output.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = (output / LOCK_NAME).open("a")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CorpusError(
                f"{output}: another heke-corpus run is writing here; wait for it to finish"
            ) from None
        yield
    finally:
        handle.close()


def clear_output(output: Path) -> None:
    """Remove what heke-corpus wrote to ``output`` (``--overwrite``); nothing else."""
    for name in (RESULTS_DIR, RUNS_DIR):
        shutil.rmtree(output / name, ignore_errors=True)
    for leftover in [*output.glob(f"{OLD_PREFIX}*"), *output.glob(f"{TMP_PREFIX}*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    (output / JSONL_NAME).unlink(missing_ok=True)


# --------------------------------------------------------------------------- compaction


def first_rows(ids: pa.ChunkedArray) -> pa.Array:
    """Positions (in ``ids``) of the first occurrence of each id."""
    table = pa.table({"id": ids, "pos": pa.array(range(len(ids)), pa.int64())})
    return (
        table.group_by("id", use_threads=False)
        .aggregate([("pos", "min")])
        .column("pos_min")
        .combine_chunks()
    )


def compact(output: Path, *, jsonl: bool, rows_per_file: int = ROWS_PER_FILE) -> int:
    """Merge every committed file into ``results/`` (one row per id); returns the row count.

    Memory holds the id column of everything plus one input file at a time. ``jsonl`` (or an
    existing ``results.jsonl``) also rewrites the JSON lines copy from the same rows.
    """
    for stale in output.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    sources = committed_files(output)
    ids = read_ids(sources)
    keep = pc.is_in(pa.array(range(len(ids)), pa.int64()), value_set=first_rows(ids))
    staging = output / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    rows = _write_kept(sources, keep, staging, rows_per_file)
    if jsonl or (output / JSONL_NAME).exists():
        write_jsonl(sorted(staging.glob("*.parquet")), output / JSONL_NAME)
    _swap_in(staging, output)
    for path in sources:  # run parts are consumed: their rows are in results/ now
        if path.parent.parent.name == RUNS_DIR:
            path.unlink(missing_ok=True)
    for old in output.glob(f"{OLD_PREFIX}*"):
        shutil.rmtree(old, ignore_errors=True)
    return rows


def _write_kept(sources: list[Path], keep: pa.Array, staging: Path, rows_per_file: int) -> int:
    offset, written, index = 0, 0, 0
    buffer: list[pa.Table] = []
    buffered = 0
    for path in sources:
        table = pq.read_table(path).cast(ROW_SCHEMA)
        mask = keep.slice(offset, table.num_rows)
        offset += table.num_rows
        kept = table.filter(mask)
        if kept.num_rows:
            buffer.append(kept)
            buffered += kept.num_rows
        while buffered >= rows_per_file:
            whole = pa.concat_tables(buffer)
            write_parquet_atomic(whole.slice(0, rows_per_file), staging / _part(index))
            index, written = index + 1, written + rows_per_file
            buffer, buffered = [whole.slice(rows_per_file)], buffered - rows_per_file
    if buffered or index == 0:  # an empty run still leaves one (empty) file with the schema
        tail = pa.concat_tables(buffer) if buffer else ROW_SCHEMA.empty_table()
        write_parquet_atomic(tail, staging / _part(index))
        written += tail.num_rows
    return written


def _part(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _swap_in(staging: Path, output: Path) -> None:
    """Put ``staging`` in place of ``results/``. Between the two renames the old set sits
    under ``.results.old-*``, which :func:`committed_files` still reads."""
    results = output / RESULTS_DIR
    if results.exists():
        results.rename(output / f"{OLD_PREFIX}{uuid.uuid4().hex[:8]}")
    staging.rename(results)
    _fsync_dir(output)


def write_jsonl(files: Sequence[Path], target: Path) -> None:
    """The records of ``files`` as JSON lines (heke-run's records plus id, label, run_id)."""
    with _synced_replacement(target, "w") as out:
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    out.write(json.dumps(record_from_row(row)) + "\n")


def read_results(output: Path) -> list[dict[str, Any]]:
    """Every compacted record of ``output`` (for tests and small corpora: all in memory)."""
    files = sorted((output / RESULTS_DIR).glob("*.parquet"))
    if not files:
        raise CorpusError(f"{output}: no compacted results (results/*.parquet)")
    return [record_from_row(row) for path in files for row in pq.read_table(path).to_pylist()]


def result_count(output: Path) -> tuple[int, pa.Array]:
    """Rows in ``results/`` and their distinct ids."""
    ids = read_ids(sorted((output / RESULTS_DIR).glob("*.parquet")))
    return len(ids), pc.unique(ids.combine_chunks())
