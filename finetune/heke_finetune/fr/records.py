"""``heke-fr``'s output: a JSON lines record per pair (series included), or a CSV row per
pair (pooled scores only, no JSON in a cell), written as ``heke-run`` writes its records."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from heke_finetune.fr.pairs import METRICS, FrResult
from heke_runtime.results import OutputError, RecordWriter, json_lines, output_format, path_key

FR_COLUMNS = (
    "ref", "dist", "status", *METRICS, "frames", "width", "height", "elapsed_s", "warnings",
    "error",
)  # fmt: skip


def pair_key(ref: str | Path, dist: str | Path) -> str:
    return f"{path_key(ref)}\n{path_key(dist)}"


def csv_row(result: FrResult) -> dict[str, Any]:
    row: dict[str, Any] = {name: _cell(result.scores.get(name)) for name in METRICS}
    row.update(
        ref=result.ref,
        dist=result.dist,
        status=result.status,
        frames=result.frames,
        width=result.width,
        height=result.height,
        elapsed_s=round(result.elapsed_s, 3),
        warnings=" | ".join(result.warnings),
        error=result.error or "",
    )
    return row


def _cell(value: float | None) -> str | float:
    return "" if value is None else value


class FrWriter(RecordWriter):
    """:class:`RecordWriter` for pair records; ``has_pair`` is what ``--resume`` skips."""

    columns = FR_COLUMNS

    def keys(self, path: Path) -> dict[str, str]:
        return {pair_key(r["ref"], r["dist"]): str(r.get("status")) for r in read_pairs(path)}

    def row(self, result: Any) -> dict[str, Any]:
        return csv_row(result)

    def has_pair(self, ref: str | Path, dist: str | Path) -> bool:
        return pair_key(ref, dist) in self.done


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Every complete pair record of a ``heke-fr`` output (unparsable lines skipped)."""
    path = Path(path)
    text = path.read_text()
    if output_format(path) == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is not None and tuple(reader.fieldnames) != FR_COLUMNS:
            raise OutputError(f"{path}: its CSV columns are not heke-fr's; cannot resume it")
        return [dict(row) for row in reader if row.get("ref") and row.get("dist")]
    return [r for r in json_lines(text) if "ref" in r and "dist" in r]
