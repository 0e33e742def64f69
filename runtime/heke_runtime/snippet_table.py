"""``heke-run --per-snippet FILE``: one row per snippet, as CSV or Parquet.

Columns: the video's path, the snippet's index, start/end time and first/last frame, the four
heads, the ensemble and the regressor (empty without one). Frame pairs of the resnet model are
its "snippets". Rows are written as each video finishes: CSV appends and fsyncs, like the
records; Parquet writes one row group per video to a temporary file, renamed over FILE when
the run ends (an interrupted run leaves the old file as it was). A video's rows are written
before its record, so a record implies its rows; ``--resume`` keeps the rows of the videos the
records file holds and drops any others (a run stopped between the two writes). Parquet needs
pyarrow (``pip install 'heke[parquet]'``).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Set
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from heke_runtime.files import atomic_write_bytes
from heke_runtime.results import REGRESSOR_NAME, OutputError, VideoResult, path_key
from heke_runtime.scores import BLIND_NAMES

COLUMNS = (
    "path", "index", "start_s", "end_s", "first_frame", "last_frame", *BLIND_NAMES,
    REGRESSOR_NAME,
)  # fmt: skip
FORMATS = (".csv", ".parquet")


def rows(result: VideoResult) -> list[dict[str, Any]]:
    """The snippet rows of one scored video (none for a failed one)."""
    return [
        {
            "path": result.path,
            "index": s.index,
            "start_s": round(s.start_s, 6),
            "end_s": round(s.end_s, 6),
            "first_frame": s.first_frame,
            "last_frame": s.last_frame,
            **{n: round(s.scores[n], 6) if n in s.scores else None for n in COLUMNS[6:]},
        }
        for s in result.snippets
    ]


def check_path(path: Path) -> None:
    """A usage check before scoring starts: the suffix, and pyarrow for Parquet."""
    if path.suffix.lower() not in FORMATS:
        raise OutputError(f"--per-snippet {path}: give a .csv or .parquet file")
    if path.suffix.lower() == ".parquet":
        _pyarrow()


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet  # the parquet extra; only this writer needs it
    except ImportError:
        raise OutputError(
            "--per-snippet .parquet needs pyarrow: pip install 'heke[parquet]'"
        ) from None
    return pyarrow


class SnippetTable:
    """Writes snippet rows to ``path`` (``.csv`` or ``.parquet``) while the run goes on."""

    def __init__(
        self,
        path: Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        keep: Set[str] = frozenset(),
    ) -> None:
        """``keep``: with ``resume``, the path keys of the videos whose rows stay."""
        check_path(path)
        self.path = path
        self.parquet = path.suffix.lower() == ".parquet"
        self.resume, self.overwrite, self.keep = resume, overwrite, keep
        self._csv: Any = None
        self._handle: IO[str] | None = None
        self._writer: Any = None  # pyarrow.parquet.ParquetWriter
        self._temp = path.with_name(f".{path.name}.writing")

    def __enter__(self) -> SnippetTable:
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists and not (self.resume or self.overwrite):
            raise OutputError(
                f"{self.path} already holds snippet rows; pass --resume to continue it or "
                "--overwrite to replace it"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = self._kept_rows() if exists and self.resume else []
        if self.parquet:
            self._open_parquet(kept)
        else:
            self._open_csv(kept, keep=exists and self.resume)
        return self

    def _kept_rows(self) -> list[dict[str, Any]]:
        """The rows already there of the videos in ``keep``."""
        try:
            if self.parquet:
                found = list(_pyarrow().parquet.read_table(self.path).to_pylist())
            else:
                found = list(csv.DictReader(io.StringIO(self.path.read_text())))
        except Exception as exc:  # pyarrow raises several kinds for a damaged file
            raise OutputError(f"{self.path}: cannot resume it ({exc})") from None
        if found and set(found[0]) != set(COLUMNS):
            raise OutputError(f"{self.path}: its columns are not heke-run's snippet rows")
        return [r for r in found if path_key(r["path"]) in self.keep]

    def _open_csv(self, kept: list[dict[str, Any]], keep: bool) -> None:
        if keep:  # rewritten with only the rows of recorded videos, then appended to
            text = io.StringIO()
            writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_bytes(self.path, text.getvalue().encode())
        self._handle = self.path.open("a" if keep else "w", newline="")
        self._csv = csv.DictWriter(self._handle, COLUMNS, lineterminator="\n")
        if self._handle.tell() == 0:
            self._csv.writeheader()
            self._sync()

    def _open_parquet(self, kept: list[dict[str, Any]]) -> None:
        """A new file under a temporary name, renamed over ``path`` when the run ends."""
        pa = _pyarrow()
        self._writer = pa.parquet.ParquetWriter(str(self._temp), _schema(pa))
        if kept:
            self._writer.write_table(pa.Table.from_pylist(kept, schema=_schema(pa)))

    def write(self, result: VideoResult) -> None:
        table = rows(result)
        if not table:
            return
        try:
            if self._writer is not None:
                pa = _pyarrow()
                self._writer.write_table(pa.Table.from_pylist(table, schema=_schema(pa)))
            elif self._csv is not None:
                self._csv.writerows(
                    {k: "" if v is None else v for k, v in r.items()} for r in table
                )
                self._sync()
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write snippet rows ({exc})") from None

    def _sync(self) -> None:
        assert self._handle is not None
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.close()
        if self._writer is not None:
            self._writer.close()
            self._temp.replace(self.path)  # even after an error: the rows written so far count


def _schema(pa: Any) -> Any:
    number = pa.float64()
    fields = [("path", pa.string()), ("index", pa.int64()), ("start_s", number)]
    fields += [("end_s", number), ("first_frame", pa.int64()), ("last_frame", pa.int64())]
    fields += [(name, number) for name in COLUMNS[6:]]
    return pa.schema(fields)


__all__ = ["COLUMNS", "SnippetTable", "check_path", "rows"]
