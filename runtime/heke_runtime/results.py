"""Typed result records, their JSON lines / CSV writers, and reading them back (resume, plot).

Score scale: the four heads imitate GMSD, ST-GMSD, ST-RRED and MS-SSIM on the DMOS-like scale
the authors trained on, about 0.5-10, where **higher means more distorted**; ``ensemble`` is
their mean. A regressor's score (``regressor``) is on the scale of the labels it was fitted to
(the authors' protocol: ``1 + 8.5*(s - min)/(max - min)``, also higher = worse).
Scores from demo weights are not quality predictions; such records say ``demo_weights: true``.

Writers append one record per finished video and flush (and fsync) it, so an interrupted run
keeps everything written so far; ``--resume`` reads the file back and trims a torn last line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeVar

import numpy as np

from heke_runtime.errors import HekeError
from heke_runtime.scores import BLIND_NAMES, MEAN, pool
from heke_runtime.sources import STDIN, is_url

REGRESSOR_NAME = "regressor"
# Bumped when a record's fields change meaning or go away (adding a field does not);
# record.schema.json, beside this file, is the record's JSON Schema (heke-run --schema).
SCHEMA_VERSION = 1
SCALE_NOTE = "DMOS-like, about 0.5-10, higher = more distorted"
DEMO_NOTE = "demo weights: these scores are not quality predictions"

Status = Literal["ok", "error"]


class OutputError(HekeError, ValueError):
    """The output file cannot be written or resumed."""


@dataclass(frozen=True)
class SnippetScore:
    """One snippet (or frame pair): where it sits in the video and its scores."""

    index: int
    start_s: float
    end_s: float
    first_frame: int
    last_frame: int
    scores: dict[str, float]


@dataclass(frozen=True)
class VideoMeta:
    num_frames: int
    fps: float
    duration_s: float
    width: int
    height: int
    codec: str = ""
    pix_fmt: str = ""
    rotation: int = 0
    transfer: str = "sdr"  # "pq", "hlg" (HDR) or "sdr"
    primaries: str = "unspecified"  # FFmpeg's name: "bt709", "bt2020"...
    hdr: str | None = None  # HDR videos: "tonemap" or "as-is" (heke-run --hdr); SDR: None


@dataclass(frozen=True)
class Sampling:
    """How the video was sampled (docs/ARCHITECTURE.md, "Sampling and preprocessing")."""

    model: str
    num_snippets: int
    frames_per_snippet: int
    time_step: int
    scale: int
    input_height: int
    input_width: int


@dataclass(frozen=True)
class EngineMeta:
    path: str
    sha256: str
    kind: str
    precision: str
    model: str
    weights_sha256: str
    demo_weights: bool
    backend: str
    device: str


@dataclass(frozen=True)
class VideoResult:
    """The outcome for one input: scores on success, ``error`` (one line) on failure.

    ``heads [T,4]`` and ``features [T,F]`` are the raw per-snippet engine outputs; they are
    kept only when the Scorer is asked to (``keep_arrays``) and never written to records.
    """

    path: str
    status: Status
    scores: dict[str, float] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    snippets: tuple[SnippetScore, ...] = ()
    video: VideoMeta | None = None
    sampling: Sampling | None = None
    engine: EngineMeta | None = None
    regressor: dict[str, str] | None = None
    demo_weights: bool = False
    warnings: tuple[str, ...] = ()
    error: str | None = None
    elapsed_s: float = 0.0
    pooled: dict[str, dict[str, float | None]] = field(default_factory=dict)
    heads: np.ndarray | None = field(default=None, repr=False, compare=False)
    features: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (no arrays); ``record.schema.json`` describes it."""
        data = {
            "schema_version": SCHEMA_VERSION,
            "path": self.path,
            "status": self.status,
            "scores": _rounded(self.scores),
            "spread": _rounded(self.spread),
            "pooled": {how: _rounded_or_none(v) for how, v in self.pooled.items()},
            "scale": SCALE_NOTE,
            "demo_weights": self.demo_weights,
            "video": _video_dict(self.video) if self.video else None,
            "sampling": asdict(self.sampling) if self.sampling else None,
            "engine": asdict(self.engine) if self.engine else None,
            "regressor": self.regressor,
            "snippets": [_snippet_dict(s) for s in self.snippets],
            "warnings": list(self.warnings),
            "error": self.error,
            "elapsed_s": round(self.elapsed_s, 3),
        }
        if self.demo_weights:
            data["note"] = DEMO_NOTE
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VideoResult:
        """Rebuild a result from a JSON record (or a CSV row turned into one)."""

        def part(kind: type, key: str) -> Any:
            value = data.get(key)
            return kind(**value) if isinstance(value, Mapping) else None

        return cls(
            path=str(data["path"]),
            status="ok" if data.get("status") == "ok" else "error",
            scores={k: float(v) for k, v in (data.get("scores") or {}).items()},
            spread={k: float(v) for k, v in (data.get("spread") or {}).items()},
            pooled={how: dict(v) for how, v in (data.get("pooled") or {}).items()},
            snippets=tuple(_snippet_from(s) for s in data.get("snippets") or ()),
            video=part(VideoMeta, "video"),
            sampling=part(Sampling, "sampling"),
            engine=part(EngineMeta, "engine"),
            regressor=data.get("regressor"),
            demo_weights=bool(data.get("demo_weights", False)),
            warnings=tuple(data.get("warnings") or ()),
            error=data.get("error"),
            elapsed_s=float(data.get("elapsed_s") or 0.0),
        )


def failed(path: str | Path, reason: str, *, elapsed_s: float = 0.0) -> VideoResult:
    return VideoResult(str(path), "error", error=one_line(reason), elapsed_s=elapsed_s)


def one_line(reason: str) -> str:
    """Errors are reported on one line: collapse whitespace and newlines."""
    return " ".join(str(reason).split()) or "unknown error"


def _snippet_dict(snippet: SnippetScore) -> dict[str, Any]:
    return {
        "index": snippet.index,
        "start_s": round(snippet.start_s, 6),
        "end_s": round(snippet.end_s, 6),
        "first_frame": snippet.first_frame,
        "last_frame": snippet.last_frame,
        **_rounded(snippet.scores),
    }


def _video_dict(video: VideoMeta) -> dict[str, Any]:
    data = asdict(video)
    data["fps"], data["duration_s"] = round(video.fps, 6), round(video.duration_s, 6)
    return data


def _rounded(scores: Mapping[str, float]) -> dict[str, float]:
    """Six decimals: far below the model's precision, and records stay readable."""
    return {name: round(float(value), 6) for name, value in scores.items()}


def _rounded_or_none(scores: Mapping[str, float | None]) -> dict[str, float | None]:
    return {name: None if v is None else round(float(v), 6) for name, v in scores.items()}


def record_schema_text() -> str:
    """``record.schema.json``, shipped in this package (heke-run --schema)."""
    return (resources.files("heke_runtime") / "record.schema.json").read_text()


def with_pools(result: VideoResult, pools: Sequence[str]) -> VideoResult:
    """``result`` with each pooling but the mean (which ``scores`` already is) of every
    per-snippet score; a pooling a video can't have (the harmonic mean of scores that are not
    all positive) is None with a warning."""
    others = [how for how in pools if how != MEAN]
    if not result.ok or not others or not result.snippets:
        return result
    names = list(result.snippets[0].scores)
    columns = {n: np.array([s.scores[n] for s in result.snippets]) for n in names}
    pooled = {how: {n: pool(columns[n], how) for n in names} for how in others}
    notes = [
        f"{how} pooling undefined for {', '.join(n for n, v in values.items() if v is None)}: "
        "the harmonic mean needs positive scores"
        for how, values in pooled.items()
        if None in values.values()
    ]
    return replace(result, pooled=pooled, warnings=(*result.warnings, *notes))


def _snippet_from(data: Mapping[str, Any]) -> SnippetScore:
    fixed = ("index", "start_s", "end_s", "first_frame", "last_frame")
    return SnippetScore(
        int(data["index"]),
        float(data["start_s"]),
        float(data["end_s"]),
        int(data["first_frame"]),
        int(data["last_frame"]),
        {k: float(v) for k, v in data.items() if k not in fixed},
    )


# --------------------------------------------------------------------------- CSV layout

CSV_COLUMNS: tuple[str, ...] = (
    "path",
    "status",
    *BLIND_NAMES,
    REGRESSOR_NAME,
    "ensemble_std",
    "demo_weights",
    "num_frames",
    "fps",
    "duration_s",
    "width",
    "height",
    "codec",
    "model",
    "num_snippets",
    "engine_sha256",
    "weights_sha256",
    "error",
)


def csv_columns(pools: Sequence[str] = ()) -> tuple[str, ...]:
    """The video-level columns; each pooling but the mean adds ``<score>_<pooling>``
    columns (``ensemble_p95``). Per-snippet rows go to ``--per-snippet``, never into a cell."""
    extra = [f"{n}_{how}" for how in pools if how != MEAN for n in (*BLIND_NAMES, REGRESSOR_NAME)]
    return (*CSV_COLUMNS[:-1], *extra, CSV_COLUMNS[-1])


def csv_row(result: VideoResult) -> dict[str, Any]:
    """One flat row of the video-level table."""
    video, sampling, engine = result.video, result.sampling, result.engine
    row: dict[str, Any] = {name: result.scores.get(name, "") for name in BLIND_NAMES}
    row.update(
        path=result.path,
        status=result.status,
        regressor=result.scores.get(REGRESSOR_NAME, ""),
        ensemble_std=result.spread.get("ensemble", ""),
        demo_weights=str(result.demo_weights).lower(),
        num_frames=video.num_frames if video else "",
        fps=video.fps if video else "",
        duration_s=video.duration_s if video else "",
        width=video.width if video else "",
        height=video.height if video else "",
        codec=video.codec if video else "",
        model=sampling.model if sampling else "",
        num_snippets=sampling.num_snippets if sampling else "",
        engine_sha256=engine.sha256 if engine else "",
        weights_sha256=engine.weights_sha256 if engine else "",
        error=result.error or "",
    )
    for how, values in result.pooled.items():
        row.update({f"{n}_{how}": "" if v is None else v for n, v in values.items()})
    return row


def _record_from_csv(row: Mapping[str, str]) -> dict[str, Any]:
    scores = {k: float(row[k]) for k in (*BLIND_NAMES, REGRESSOR_NAME) if row.get(k)}
    spread = {"ensemble": float(row["ensemble_std"])} if row.get("ensemble_std") else {}
    return {
        "path": row["path"],
        "status": row.get("status", "error"),
        "scores": scores,
        "spread": spread,
        "demo_weights": row.get("demo_weights") == "true",
        "error": row.get("error") or None,
    }


# --------------------------------------------------------------------------- writing


def output_format(path: Path | None) -> Literal["jsonl", "csv"]:
    return "csv" if path is not None and path.suffix.lower() == ".csv" else "jsonl"


_Writer = TypeVar("_Writer", bound="RecordWriter")


class RecordWriter:
    """Appends records to a JSON lines or CSV file (``None``: JSON lines on stdout).

    Each ``write`` is flushed and fsynced before it returns, so a crash loses at most the video
    being scored. ``resume=True`` keeps the existing records (a torn last line is cut off);
    otherwise an existing non-empty file is refused unless ``overwrite=True``.

    Other record kinds (``heke-fr``'s pairs) subclass it and override ``columns``, ``row``,
    ``line`` and ``keys``: the file handling, fsync and resume rules stay in one place.
    """

    columns: tuple[str, ...] = CSV_COLUMNS

    def __init__(
        self,
        path: str | Path | None,
        *,
        resume: bool = False,
        overwrite: bool = False,
        pools: Sequence[str] = (),
    ) -> None:
        self.path = Path(path) if path is not None else None
        if pools:
            self.columns = csv_columns(pools)
        self.format = output_format(self.path)
        self.resume = resume
        self.overwrite = overwrite
        self._handle: IO[str] | None = None
        self._csv: Any = None
        self._failed = False  # a write failed and was reported: closing may fail the same way
        self.done: dict[str, str] = {}  # path key -> status of records already in the file

    def __enter__(self: _Writer) -> _Writer:
        if self.path is None:
            self._handle = sys.stdout
            return self
        self._prepare()
        self._handle = self.path.open("a", newline="" if self.format == "csv" else None)
        if self.format == "csv":
            self._csv = csv.DictWriter(self._handle, self.columns, lineterminator="\n")
            if self._handle.tell() == 0:
                self._csv.writeheader()
                self._sync()
        return self

    def _prepare(self) -> None:
        assert self.path is not None
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a directory; give a .jsonl or .csv file")
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists and self.resume:
            trim_torn_line(self.path)
            self.done = self.keys(self.path)
        elif exists and not self.overwrite:
            raise OutputError(
                f"{self.path} already holds results; pass --resume to continue it or "
                "--overwrite to replace it"
            )
        elif exists:
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def keys(self, path: Path) -> dict[str, str]:
        """Key -> status of each record already in ``path`` (written with the same columns)."""
        if self.format == "csv":
            _check_header(path, self.columns)
        return {path_key(r["path"]): str(r.get("status")) for r in read_records(path)}

    def row(self, result: Any) -> dict[str, Any]:
        return csv_row(result)

    def line(self, result: Any) -> dict[str, Any]:
        return dict(result.to_dict())

    def has(self, path: str | Path) -> bool:
        """Whether ``path`` already has a record (resume skips it)."""
        return path_key(path) in self.done

    def write(self, result: Any) -> None:
        if self._handle is None:
            raise OutputError("RecordWriter.write outside its 'with' block")
        try:
            if self._csv is not None:
                self._csv.writerow(self.row(result))
            else:
                self._handle.write(json.dumps(self.line(result)) + "\n")
            self._sync()
        except OSError as exc:
            self._failed = True
            raise self._cannot_write(exc) from None

    def _cannot_write(self, exc: OSError) -> OutputError:
        return OutputError(f"{self.path or 'stdout'}: cannot write results ({exc})")

    def _sync(self) -> None:
        assert self._handle is not None
        self._handle.flush()
        if self.path is not None:
            os.fsync(self._handle.fileno())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        handle, self._handle = self._handle, None
        if handle is None or self.path is None:
            return
        try:
            handle.close()  # flushes what a failed write left in the buffer
        except OSError as error:
            if not self._failed:  # every write was flushed: a new problem, not a repeat
                raise self._cannot_write(error) from None


def path_key(path: str | os.PathLike[str]) -> str:
    """How records and inputs are matched on resume: the absolute, normalised path (a URL,
    or ``-`` for standard input, as given)."""
    text = os.fspath(path)
    if text == STDIN or is_url(text):
        return text
    return os.path.normpath(os.path.abspath(text))


def trim_torn_line(path: Path) -> None:
    """Cut a last line that has no newline (a write interrupted mid-record)."""
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of a JSON lines or CSV results file (unparsable lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise OutputError(f"{path}: no such results file")
    text = path.read_text()
    if output_format(path) == "csv":
        return _read_csv(path, text)
    return [record for record in json_lines(text) if "path" in record]


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSON lines text; a line that is not one (torn by an interrupted
    write) is skipped."""
    objects = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            objects.append(value)
    return objects


def _read_csv(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        return []
    if not set(CSV_COLUMNS) <= set(reader.fieldnames):
        raise OutputError(f"{path}: its CSV columns are not heke-run's; cannot read it")
    return [_record_from_csv(row) for row in reader if row.get("path")]


def _check_header(path: Path, columns: Sequence[str]) -> None:
    """Resuming appends rows: the file's columns must be the ones this run writes."""
    with path.open(newline="") as handle:
        header = next(csv.reader(handle), [])
    if header and tuple(header) != tuple(columns):
        raise OutputError(
            f"{path}: its CSV columns differ from this run's (another --pool?); cannot resume it"
        )


def load_results(path: str | Path) -> list[VideoResult]:
    return [VideoResult.from_dict(r) for r in read_records(path)]


# --------------------------------------------------------------------------- table


def _number(value: float | None, width: int = 7) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:{width}.3f}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def format_table(results: Sequence[VideoResult], *, path_width: int = 40) -> str:
    """A plain-text summary table, one row per video, and a totals line."""
    with_reg = any(REGRESSOR_NAME in r.scores for r in results)
    names = [*BLIND_NAMES, *([REGRESSOR_NAME] if with_reg else [])]
    header = [
        "video".ljust(path_width),
        "status",
        *(n.rjust(8) for n in names),
        "   ±std",
        "frames",
    ]
    lines = ["  ".join(header)]
    for result in results:
        cells = [_short(result.path, path_width).ljust(path_width), result.status.ljust(6)]
        if result.ok:
            cells += [_number(result.scores.get(n), 8) for n in names]
            cells += [_number(result.spread.get("ensemble")), _frames(result)]
        else:
            cells.append(result.error or "")
        lines.append("  ".join(cells))
    for how in dict.fromkeys(how for r in results for how in r.pooled):
        lines += _pooled_rows(results, how, names, path_width)
    ok = sum(r.ok for r in results)
    lines.append(f"{ok} scored, {len(results) - ok} failed; scale: {SCALE_NOTE}")
    if any(r.demo_weights for r in results):
        lines.append(f"NOTE: {DEMO_NOTE}")
    return "\n".join(lines)


def _pooled_rows(
    results: Sequence[VideoResult], how: str, names: Sequence[str], path_width: int
) -> list[str]:
    """The same columns pooled another way (``--pool``), under a line naming the pooling."""
    lines = [f"-- {how} over snippets".ljust(path_width + 8) + "  ".join(n.rjust(8) for n in names)]
    for result in results:
        if how in result.pooled:
            cells = [_number(result.pooled[how].get(n), 8) for n in names]
            lines.append(_short(result.path, path_width).ljust(path_width + 8) + "  ".join(cells))
    return lines


def _frames(result: VideoResult) -> str:
    return str(result.video.num_frames).rjust(6) if result.video else "-".rjust(6)


def summarise(results: Iterable[VideoResult]) -> tuple[int, int]:
    """``(scored, failed)`` counts."""
    items = list(results)
    ok = sum(r.ok for r in items)
    return ok, len(items) - ok
