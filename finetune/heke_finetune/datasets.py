"""Dataset lists: the authors' format and a plain ``path score`` one; score normalisation.

Authors' format (``dataset_info/<NAME>_list_for_VQA.txt``), one video per line::

    ref_id dis_type_id ref_name dis_name score width height frames

Plain format: ``path score`` or ``path score content`` (whitespace separated, or tab separated
when a path holds spaces). Without a content column every video is its own content.
Lines starting with ``#`` are comments; two are read as settings: ``# direction: mos`` (or
``dmos``) and ``# dataset: NAME``. Paths are relative to the list's folder unless a base
folder is given.

Scores are normalised per dataset as the authors do, in float32 exactly like their code:
``1 + 8.5*(s - min)/(max - min)``; MOS datasets (higher = better) are then reversed to
``10.5 - s`` so that every target is DMOS-like, higher = more distorted, like HEKE's heads.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from heke_runtime.errors import HekeError
from heke_runtime.files import atomic_write_bytes

ListFormat = Literal["authors", "plain"]
Direction = Literal["dmos", "mos"]
DIRECTIONS: tuple[str, ...] = ("dmos", "mos")
AUTHORS_FIELDS = 8
SCALE_NOTE = "1 + 8.5*(s - min)/(max - min); MOS reversed to 10.5 - s (higher = worse)"


class DatasetListError(HekeError, ValueError):
    """A dataset list is missing, malformed or unusable."""


@dataclass(frozen=True)
class DatasetPreset:
    """What the authors' scripts fix per dataset."""

    name: str
    batch_size: int
    direction: Direction
    contents: int  # reference videos (the split enumeration depends on it)


# Batch sizes from the table in the authors' demo_finetune_VQA.py; EPFL-PoliMI and IVC-IC
# carry MOS (their --mos flag); the others DMOS.
PRESETS: dict[str, DatasetPreset] = {
    p.name: p
    for p in (
        DatasetPreset("LIVE", 15, "dmos", 10),
        DatasetPreset("CSIQ", 18, "dmos", 12),
        DatasetPreset("IVPL", 4, "dmos", 10),
        DatasetPreset("IVC-IC", 16, "mos", 60),
        DatasetPreset("EPFL-PoliMI", 12, "mos", 12),
        DatasetPreset("LIVE-Mobile", 16, "dmos", 10),
    )
}


@dataclass(frozen=True)
class VideoEntry:
    """One line of a dataset list."""

    path: str  # as written in the list
    score: float  # raw score as written
    content: str  # reference content id (authors: ref_id)
    line: int
    reference: str = ""
    distortion: str = ""
    width: int | None = None
    height: int | None = None
    frames: int | None = None


@dataclass(frozen=True)
class DatasetList:
    """A parsed list; ``base`` is the folder its paths are relative to."""

    entries: tuple[VideoEntry, ...]
    source: str
    format: ListFormat
    base: Path
    name: str
    declared_direction: Direction | None = None

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def preset(self) -> DatasetPreset | None:
        return PRESETS.get(self.name)

    def paths(self) -> list[Path]:
        """Every video's path, resolved against ``base``."""
        return [resolve(self.base, e.path) for e in self.entries]

    def raw_scores(self) -> np.ndarray:
        return np.array([e.score for e in self.entries], dtype=np.float64)

    def content_ids(self) -> list[str]:
        """Distinct contents: numeric order when all are integers (the authors' ref ids),
        else in order of first appearance."""
        seen = list(dict.fromkeys(e.content for e in self.entries))
        if all(re.fullmatch(r"-?\d+", c) for c in seen):
            return sorted(seen, key=int)
        return seen

    def content_index(self) -> np.ndarray:
        """For each video, the position of its content in :meth:`content_ids`."""
        position = {c: i for i, c in enumerate(self.content_ids())}
        return np.array([position[e.content] for e in self.entries], dtype=np.int64)

    def direction(self, requested: str = "auto") -> Direction:
        """The score direction: explicit, else the list's header, else the dataset's preset,
        else DMOS (the authors' default)."""
        if requested != "auto":
            return check_direction(requested)
        if self.declared_direction is not None:
            return self.declared_direction
        preset = self.preset
        return preset.direction if preset else "dmos"

    def targets(self, direction: str = "auto") -> np.ndarray:
        """Training/evaluation targets: normalised, MOS reversed (float32, higher = worse)."""
        return to_dmos_like(
            normalise_scores(self.raw_scores(), self.source), self.direction(direction)
        )


def check_direction(value: str) -> Direction:
    if value == "dmos":
        return "dmos"
    if value == "mos":
        return "mos"
    raise DatasetListError(f"unknown score direction {value!r}; valid: auto, dmos, mos")


def normalise_scores(raw: np.ndarray, source: str = "scores") -> np.ndarray:
    """``1 + 8.5*(s - min)/(max - min)`` in float32, the same operations as the authors."""
    scores = np.asarray(raw, dtype=np.float32)
    if scores.size == 0:
        raise DatasetListError(f"{source}: no scores to normalise")
    low, high = scores.min(), scores.max()
    if not high > low:
        raise DatasetListError(f"{source}: every score is {low}; cannot normalise a constant")
    return 1 + 8.5 * (scores - low) / (high - low)


def to_dmos_like(normalised: np.ndarray, direction: Direction) -> np.ndarray:
    """MOS (higher = better) becomes ``10.5 - s``; DMOS stays (authors' --mos switch)."""
    values = np.asarray(normalised, dtype=np.float32)
    return (10.5 - values).astype(np.float32) if direction == "mos" else values


def resolve(base: Path, path: str) -> Path:
    """A list path made absolute and normalised (how lists and features are matched)."""
    return Path(os.path.normpath(os.path.join(os.path.abspath(base), path)))


# --------------------------------------------------------------------------- parsing


def load_list(path: str | Path, *, base: str | Path | None = None) -> DatasetList:
    """Read a list in either format (one format per file)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetListError(f"{path}: no such dataset list")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetListError(f"{path}: unreadable dataset list ({exc})") from None
    return parse_list(text, source=str(path), base=Path(base) if base else path.parent)


def parse_list(text: str, *, source: str, base: Path) -> DatasetList:
    entries: list[VideoEntry] = []
    settings: dict[str, str] = {}
    fmt: ListFormat | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            _read_setting(line, settings)
            continue
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        kind: ListFormat = "authors" if len(fields) == AUTHORS_FIELDS else "plain"
        if fmt is not None and kind != fmt:
            raise DatasetListError(
                f"{source}:{number}: {len(fields)} fields, but earlier lines are in the "
                f"{fmt} format"
            )
        fmt = kind
        parse = _authors_entry if kind == "authors" else _plain_entry
        entries.append(parse(fields, source, number))
    if not entries:
        raise DatasetListError(f"{source}: the dataset list holds no videos")
    _check_unique(entries, source)
    declared = settings.get("direction")
    return DatasetList(
        tuple(entries),
        source,
        fmt or "plain",
        base,
        settings.get("dataset") or dataset_name(source),
        check_direction(declared) if declared else None,
    )


def _read_setting(line: str, settings: dict[str, str]) -> None:
    match = re.fullmatch(r"#\s*(direction|dataset)\s*:\s*(\S+).*", line, flags=re.IGNORECASE)
    if match:
        settings[match.group(1).lower()] = match.group(2)


def dataset_name(source: str) -> str:
    """``LIVE`` for ``.../LIVE_list_for_VQA.txt``; otherwise the file's stem."""
    stem = Path(source).stem
    return stem[: -len("_list_for_VQA")] if stem.endswith("_list_for_VQA") else stem


def _number(token: str, what: str, source: str, line: int) -> float:
    try:
        value = float(token)
    except ValueError:
        raise DatasetListError(f"{source}:{line}: {what} {token!r} is not a number") from None
    if not math.isfinite(value):
        raise DatasetListError(f"{source}:{line}: {what} {token!r} is not a finite number")
    return value


def _integer(token: str, what: str, source: str, line: int) -> int:
    try:
        value = int(token)
    except ValueError:
        raise DatasetListError(f"{source}:{line}: {what} {token!r} is not an integer") from None
    if value < 1:
        raise DatasetListError(f"{source}:{line}: {what} must be positive, got {value}")
    return value


def _authors_entry(fields: list[str], source: str, line: int) -> VideoEntry:
    ref_id, dis_type, ref_name, dis_name, score, width, height, frames = fields
    try:
        content = str(int(ref_id))
    except ValueError:
        raise DatasetListError(f"{source}:{line}: ref_id {ref_id!r} is not an integer") from None
    return VideoEntry(
        path=dis_name,
        score=_number(score, "score", source, line),
        content=content,
        line=line,
        reference=ref_name,
        distortion=dis_type,
        width=_integer(width, "width", source, line),
        height=_integer(height, "height", source, line),
        frames=_integer(frames, "frame count", source, line),
    )


def _plain_entry(fields: list[str], source: str, line: int) -> VideoEntry:
    if len(fields) not in (2, 3) or not all(fields):
        raise DatasetListError(
            f"{source}:{line}: expected 'path score [content]' (2 or 3 fields) or the authors' "
            f"{AUTHORS_FIELDS} fields 'ref_id dis_type_id ref_name dis_name score width height "
            f"frames', got {len(fields)}"
        )
    path, score = fields[0], _number(fields[1], "score", source, line)
    return VideoEntry(path, score, fields[2] if len(fields) == 3 else path, line)


def _check_unique(entries: Sequence[VideoEntry], source: str) -> None:
    first: dict[str, int] = {}
    for entry in entries:
        if entry.path in first:
            raise DatasetListError(
                f"{source}:{entry.line}: {entry.path} is listed twice (first on line "
                f"{first[entry.path]}); videos are matched by path"
            )
        first[entry.path] = entry.line


# --------------------------------------------------------------------------- writing


def authors_line(entry: VideoEntry) -> str:
    """One line in the authors' format (needs reference, size and frame count). Scores keep
    10 significant digits: FR labels such as GMSD (~0.02) need more than 4 decimals."""
    if entry.width is None or entry.height is None or entry.frames is None:
        raise DatasetListError(f"{entry.path}: the authors' format needs width, height, frames")
    for value in (entry.path, entry.reference):
        if not value or any(c.isspace() for c in value):
            raise DatasetListError(f"{value!r}: the authors' format needs paths without spaces")
    return (
        f"{entry.content} {entry.distortion or 0} {entry.reference} {entry.path} "
        f"{entry.score:.10g} {entry.width} {entry.height} {entry.frames}"
    )


def write_authors_list(
    path: str | Path, entries: Iterable[VideoEntry], comments: Sequence[str] = ()
) -> Path:
    """Write a list in the authors' format, ``# comment`` lines first (atomic)."""
    path = Path(path)
    lines = [f"# {c}" for c in comments] + [authors_line(e) for e in entries]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path


__all__ = [
    "DIRECTIONS",
    "PRESETS",
    "SCALE_NOTE",
    "DatasetList",
    "DatasetListError",
    "DatasetPreset",
    "Direction",
    "VideoEntry",
    "authors_line",
    "check_direction",
    "dataset_name",
    "load_list",
    "normalise_scores",
    "parse_list",
    "resolve",
    "to_dmos_like",
    "write_authors_list",
]
