"""``heke-fr``: the authors' four FR metrics for (reference, distorted) pairs.

    heke-fr REF DIST [--size WxH] [-o out.jsonl|out.csv]
    heke-fr --pairs pairs.txt [-o out.jsonl] [--resume]

Each pair gets one record (see :class:`heke_finetune.fr.pairs.FrResult`); a pair that fails
gets an error record with a one-line reason naming both files, and the others go on. Exit
status: 0 all scored, 1 a pair failed, 2 a usage error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from heke_finetune.fr import metrics
from heke_finetune.fr.pairs import (
    ALIGN_CHOICES,
    LABELS,
    MAX_THREADS,
    METRICS,
    FrResult,
    PairError,
    failed_pair,
    score_pair,
)
from heke_finetune.fr.records import FrWriter
from heke_runtime.cli_common import (
    EXIT_FAILED,
    failure,
    new_app,
    raw_size,
    run_app,
    size_from_text,
    usage_error,
    user_errors,
)
from heke_runtime.results import one_line
from heke_runtime.yuv import RAW_DEFAULT, RawSize

PROG = "heke-fr"
app = new_app(__doc__.splitlines()[0] if __doc__ else None)
PAIRS_HELP = (
    "A text file of pairs, one per line: REF DIST [WxH] (whitespace-separated, relative to "
    "the file's folder; '#' starts a comment). WxH is the size of raw .yuv files."
)
ALIGN_HELP = (
    "Frame counts that differ: 'exact' refuses the pair, 'shortest' compares the first N "
    "frames of both (N the shorter count) and says so in the record."
)


@dataclass(frozen=True)
class PairItem:
    ref: Path
    dist: Path
    size: tuple[int, int] | None


def _usage(message: str) -> NoReturn:
    usage_error(PROG, message)


def read_pair_list(
    path: Path, size: tuple[int, int] | None, pix_fmt: str = RAW_DEFAULT
) -> list[PairItem]:
    """The pairs of a ``--pairs`` file; a malformed line is a usage error naming it."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        _usage(f"--pairs {path}: {exc.strerror or exc}")
    items = []
    for number, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            _usage(f"{path}:{number}: expected 'REF DIST [WxH]', got {line.strip()!r}")
        try:
            own = _line_size(fields[2], pix_fmt) if len(fields) == 3 else size
        except ValueError as exc:
            _usage(f"{path}:{number}: {exc}")
        base = path.parent
        items.append(PairItem(base / fields[0], base / fields[1], own))
    if not items:
        _usage(f"--pairs {path}: no pairs in it")
    return items


def _line_size(text: str, pix_fmt: str) -> tuple[int, int]:
    """A pairs line's WxH, in the pixel format --pix-fmt gives every raw input."""
    width, height = size_from_text(text) or (0, 0)
    return RawSize(width, height, pix_fmt)


def _items(
    ref: Path | None,
    dist: Path | None,
    pairs: Path | None,
    size: tuple[int, int] | None,
    pix_fmt: str,
) -> list[PairItem]:
    if pairs is not None:
        if ref is not None:
            _usage("give either REF DIST or --pairs FILE, not both")
        return read_pair_list(pairs, size, pix_fmt)
    if ref is None or dist is None:
        _usage("give REF and DIST (or --pairs FILE)")
    return [PairItem(ref, dist, size)]


def _score(item: PairItem, align: str, threads: int | None, progress: bool) -> FrResult:
    label = item.dist.name
    with typer.progressbar(length=1, label=label, file=sys.stderr, hidden=not progress) as bar:

        def advance(done: int, total: int) -> None:
            bar.length = total
            bar.update(1)

        try:
            return score_pair(
                item.ref, item.dist, size=item.size, align=align, progress=advance, threads=threads
            )
        except PairError as exc:
            return failed_pair(item.ref, item.dist, one_line(str(exc)))


def _summary(result: FrResult) -> str:
    if not result.ok:
        return f"{PROG}: FAILED {result.error}"
    values = " ".join(f"{LABELS[m]} {_number(result.scores.get(m))}" for m in METRICS)
    return f"{PROG}: {result.dist}: {values} ({result.frames} frames, {result.elapsed_s:.1f} s)"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


@app.command()
def fr(
    ref: Annotated[Path | None, typer.Argument(help="Reference (pristine) video.")] = None,
    dist: Annotated[Path | None, typer.Argument(help="Distorted video.")] = None,
    pairs: Annotated[Path | None, typer.Option("--pairs", help=PAIRS_HELP)] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Records to write: .jsonl (with per-frame series) "
            "or .csv (pooled scores). Default: JSON lines on stdout.",
        ),
    ] = None,
    size: Annotated[
        str | None, typer.Option(help="WIDTHxHEIGHT of raw .yuv inputs (yuv420p).")
    ] = None,
    align: Annotated[str, typer.Option(help=ALIGN_HELP)] = "exact",
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip pairs already in --output.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --output.")] = False,
    pix_fmt: Annotated[
        str, typer.Option(help="Pixel format of raw .yuv inputs (yuv420p, yuv422p, yuv444p...).")
    ] = "yuv420p",
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Threads for a frame pair's filters and pyramids (default: up "
            f"to {MAX_THREADS} cores). The values don't depend on it.",
        ),
    ] = None,
) -> None:
    """Score (reference, distorted) pairs with GMSD, ST-GMSD, ST-RRED and MS-SSIM as the
    authors computed them (mean of per-frame values; GMSD, ST-GMSD, ST-RRED: higher is
    worse; MS-SSIM: higher is better)."""
    if missing := metrics.missing_extra():
        failure(PROG, f"heke-fr needs {' and '.join(missing)}: pip install 'heke[fr]'")
    if align not in ALIGN_CHOICES:
        _usage(f"--align {align!r}: expected one of {', '.join(ALIGN_CHOICES)}")
    if resume and output is None:
        _usage("--resume needs --output FILE (the records to continue)")
    frame_size = raw_size(PROG, size, pix_fmt)
    items = _items(ref, dist, pairs, frame_size, pix_fmt)
    failures = 0
    with user_errors(PROG), FrWriter(output, resume=resume, overwrite=overwrite) as writer:
        todo = [i for i in items if not writer.has_pair(i.ref, i.dist)]
        if len(todo) < len(items):
            typer.echo(f"{PROG}: resuming: {len(items) - len(todo)} pairs already done", err=True)
        for item in todo:
            result = _score(item, align, threads, progress=sys.stderr.isatty())
            writer.write(result)
            failures += not result.ok
            typer.echo(_summary(result), err=True)
            for warning in result.warnings:
                typer.echo(f"{PROG}: warning: {result.dist}: {warning}", err=True)
    if failures:
        typer.echo(f"{PROG}: {failures} of {len(todo)} pair(s) failed", err=True)
        raise typer.Exit(EXIT_FAILED)


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, PROG, argv)
