"""``heke-corpus``: score a corpus on a Ray cluster; a thin layer over :func:`run_corpus`.

Exit status: 0 every input scored, 1 any input failed or the run stopped (rerun with
``--resume``), 2 usage errors (bad options, missing engine or manifest, nothing to score, an
output folder that already holds results without ``--resume``/``--overwrite``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from heke_corpus.run import (
    DEVICES,
    MANIFEST_SUFFIXES,
    CorpusOptions,
    CorpusSummary,
    CorpusUsageError,
    RunInfo,
    run_corpus,
)
from heke_runtime import cli_common as common
from heke_runtime.backends import BACKENDS
from heke_runtime.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    TIMEOUT_HELP,
    echo_problems,
    new_app,
    run_app,
)
from heke_runtime.errors import HekeError
from heke_runtime.results import SCALE_NOTE, VideoResult, format_table
from heke_runtime.scorer import DEFAULT_BATCH_SIZE, expand_inputs

PROG = "heke-corpus"
TABLE_LIMIT = 100  # above this many results, a totals line replaces the table

app = new_app("Score a corpus of videos on a Ray cluster (resumable; results as Parquet).")


def usage_error(message: str) -> NoReturn:
    common.usage_error(PROG, message)


class Progress:
    """heke-run's progress on stderr: a bar (on a terminal), FAILED and warning lines."""

    def __init__(self, *, show_bar: bool) -> None:
        self.show_bar = show_bar
        self.results: list[VideoResult] = []
        self._bar: Any = None

    def start(self, info: RunInfo) -> None:
        typer.echo(f"{PROG}: {info.description}", err=True)
        if info.dashboard_url:
            typer.echo(f"{PROG}: Ray dashboard: {info.dashboard_url}", err=True)
        if info.skipped:
            typer.echo(f"{PROG}: resuming: {info.skipped} inputs already done", err=True)
        if info.duplicates:
            typer.echo(f"{PROG}: {info.duplicates} repeated inputs scored once", err=True)
        self._bar = typer.progressbar(
            length=info.todo, label="scoring", file=sys.stderr, hidden=not self.show_bar
        )
        self._bar.__enter__()

    def result(self, result: VideoResult) -> None:
        if len(self.results) <= TABLE_LIMIT:
            self.results.append(result)
        echo_problems(PROG, result)
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def report(summary: CorpusSummary, results: list[VideoResult]) -> None:
    if results and len(results) <= TABLE_LIMIT:
        typer.echo(format_table(results))
    elif summary.scored + summary.failed:
        typer.echo(f"{summary.scored} scored, {summary.failed} failed; scale: {SCALE_NOTE}")
    else:
        typer.echo(f"{PROG}: nothing to do: every input is already in the output", err=True)
    done = summary.scored + summary.failed
    rate = f", {done / summary.elapsed_s:.2f} videos/s" if done and summary.elapsed_s else ""
    typer.echo(
        f"{PROG}: {summary.records} records in {summary.output / 'results'} "
        f"(run {summary.run_id}: {summary.elapsed_s:.1f} s{rate})",
        err=True,
    )
    if summary.missing:
        shown = ", ".join(summary.missing[:5])
        typer.echo(
            f"{PROG}: error: {len(summary.missing)} inputs have no record ({shown}); "
            "rerun with --resume to score them",
            err=True,
        )


@app.command()
def corpus(
    engine: Annotated[
        Path, typer.Option("--engine", "-e", help=".onnx or .plan engine (with its .json sidecar).")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Output folder: results/*.parquet, runs/, results.jsonl."
        ),
    ],
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Video files, folders, globs or path lists, as heke-run takes them.",
            show_default=False,
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            help=f"Table of videos ({', '.join(MANIFEST_SUFFIXES)}): a 'path' column, optional "
            "'id' and numeric 'label'. Relative paths are taken from the manifest's folder."
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip ids already in --output; add the rest.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Remove heke-corpus results from --output first.")
    ] = False,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="Also write results.jsonl (heke-run's records).")
    ] = False,
    run_id: Annotated[
        str | None, typer.Option(help="Name of this run (default: date, time and a random tag).")
    ] = None,
    regressor: Annotated[
        Path | None, typer.Option(help="Fine-tuned regressor .npz (adds the 'regressor' score).")
    ] = None,
    snippets: Annotated[
        int | None,
        typer.Option(min=2, help="Snippets per video. Default: the engine's (as heke-run)."),
    ] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT of raw .yuv inputs.")] = None,
    pix_fmt: Annotated[
        str, typer.Option(help="Pixel format of raw .yuv inputs, as heke-run --pix-fmt.")
    ] = "yuv420p",
    on_damage: Annotated[
        str, typer.Option(help="fail or conceal damaged videos, as heke-run --on-damage.")
    ] = "fail",
    hdr: Annotated[
        str, typer.Option(help="tonemap or as-is for HDR videos, as heke-run --hdr.")
    ] = "tonemap",
    backend: Annotated[
        str | None,
        typer.Option(
            help=f"One of {', '.join(BACKENDS)}. Default: from the engine suffix, with ONNX "
            "Runtime's CPU or CUDA provider named to match --device."
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(help=f"Where inference runs: {', '.join(DEVICES)} (auto: GPUs if any)."),
    ] = "auto",
    actors: Annotated[
        int | None,
        typer.Option(min=1, help="Engine actors (default: one per GPU; CPU: 1 up to CPUs/2)."),
    ] = None,
    actor_cpus: Annotated[float, typer.Option(help="CPUs per engine actor.")] = 1.0,
    decode_cpus: Annotated[float, typer.Option(help="CPUs per decode task.")] = 1.0,
    videos_per_task: Annotated[
        int, typer.Option(min=1, help="Most videos one decode task prepares.")
    ] = 16,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help="Snippets per inference call. Default: as heke-run, the backend's choice "
            f"(1 on CPU, {DEFAULT_BATCH_SIZE} on GPUs).",
        ),
    ] = None,
    max_retries: Annotated[
        int,
        typer.Option(
            min=-1, help="Retries of a decode task whose worker or node died (-1: forever)."
        ),
    ] = 5,
    timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            show_default=False,
            help=TIMEOUT_HELP,
        ),
    ] = None,
    flush_rows: Annotated[int, typer.Option(min=1, help="Commit a part every N records.")] = 1000,
    flush_seconds: Annotated[
        float, typer.Option(help="... or every this many seconds, whichever comes first.")
    ] = 30.0,
) -> None:
    """Score a corpus; records are committed as they finish and compacted at the end."""
    if not inputs and manifest is None:
        usage_error("nothing to score: give videos, folders or lists, or --manifest")
    common.check_timeout(PROG, timeout)
    try:
        options = CorpusOptions(
            regressor=str(regressor) if regressor else None,
            num_snippets=snippets,
            batch_size=batch_size,
            backend=backend,
            size=common.parse_size(PROG, size),
            address=address,
            device=device,  # type: ignore[arg-type]  # CorpusOptions checks it
            actors=actors,
            actor_cpus=actor_cpus,
            decode_cpus=decode_cpus,
            videos_per_task=videos_per_task,
            max_retries=max_retries,
            run_id=run_id,
            resume=resume,
            overwrite=overwrite,
            jsonl=jsonl,
            flush_rows=flush_rows,
            flush_s=flush_seconds,
            timeout_s=timeout,
            pix_fmt=pix_fmt,
            on_damage=on_damage,  # type: ignore[arg-type]  # CorpusOptions checks it
            hdr=hdr,  # type: ignore[arg-type]  # likewise
        )
    except HekeError as exc:
        usage_error(str(exc))
    if manifest is None:
        _require_videos(inputs or [])
    summary, results = _run(inputs or [], engine, output, manifest, options)
    report(summary, results)
    raise typer.Exit(EXIT_OK if summary.ok else EXIT_FAILED)


def _require_videos(inputs: list[str]) -> None:
    """As heke-run: inputs that name no video at all are a usage error, not a run."""
    items = expand_inputs(inputs)
    if not any(item.error is None for item in items):
        for item in items:
            typer.echo(f"{PROG}: {item.path}: {item.error}", err=True)
        usage_error("no videos to score")


def _run(
    inputs: list[str],
    engine: Path,
    output: Path,
    manifest: Path | None,
    options: CorpusOptions,
) -> tuple[CorpusSummary, list[VideoResult]]:
    progress = Progress(show_bar=sys.stderr.isatty())
    try:
        summary = run_corpus(
            inputs,
            engine,
            output,
            manifest=manifest,
            options=options,
            on_start=progress.start,
            on_result=progress.result,
        )
    except CorpusUsageError as exc:
        progress.close()
        usage_error(str(exc))
    except HekeError as exc:
        progress.close()
        common.failure(PROG, exc)
    progress.close()
    return summary, progress.results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status instead of exiting (``heke-corpus`` exits with it)."""
    return run_app(app, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())
