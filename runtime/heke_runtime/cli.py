"""``heke-run``: score videos with an exported HEKE engine; a thin layer over :class:`Scorer`.

Exit status: 0 every input scored, 1 any input failed (or the engine cannot run), 2 usage
errors (bad options, missing engine or regressor, nothing to score).
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, cast

import typer

from heke_runtime import cli_common as common
from heke_runtime.backends import BACKENDS, backend_name_for
from heke_runtime.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    TIMEOUT_HELP,
    echo_problems,
    new_app,
    run_app,
)
from heke_runtime.errors import HekeError
from heke_runtime.hdr import DEFAULT_HDR, HDR_CHOICES, HdrMode
from heke_runtime.results import (
    RecordWriter,
    VideoResult,
    failed,
    format_table,
    record_schema_text,
    with_pools,
)
from heke_runtime.scorer import DEFAULT_BATCH_SIZE, InputItem, Scorer, expand_inputs
from heke_runtime.scores import POOLS_HELP, parse_pools
from heke_runtime.snippet_table import SnippetTable, check_path

if TYPE_CHECKING:
    from heke_runtime.decode import OnDamage

PROG = "heke-run"
ON_DAMAGE_HELP = (
    "What a damaged video (corrupt packets, frames decoded with errors) gets: 'fail' (an error "
    "record, no score) or 'conceal' (scored as FFmpeg's error concealment decodes it; the "
    "record gets a 'concealed damage: N of M decoded frames had errors' warning)."
)
HDR_HELP = (
    "How an HDR video (PQ or HLG transfer; HEKE was trained on SDR) is read: 'tonemap' (to SDR "
    "BT.709: BT.2390 tone curve to 100 nits, BT.2020 to BT.709 primaries) or 'as-is' (its code "
    "values read as SDR, as FFmpeg converts them). Its record gets video.transfer, "
    "video.primaries, video.hdr and a warning."
)

app = new_app("Score videos with a HEKE engine (blind quality: higher = more distorted).")


def usage_error(message: str) -> NoReturn:
    common.usage_error(PROG, message)


def check_options(
    engine: Path, regressor: Path | None, backend: str | None, output: str | None, resume: bool
) -> str:
    """Usage errors before anything runs; returns the backend's name (resolved here, once)."""
    name, problem = None, ""
    try:
        name = backend_name_for(engine, backend)
    except HekeError as exc:  # reported after the engine and regressor checks
        problem = str(exc)
    if not engine.is_file() and not (name and BACKENDS[name].fileless(str(engine))):
        usage_error(f"--engine {engine}: no such file")
    if regressor is not None and not regressor.is_file():
        usage_error(f"--regressor {regressor}: no such file")
    if name is None:
        usage_error(problem)
    if resume and (output is None or output == "-"):
        usage_error("--resume needs --output FILE (the results to continue)")
    return name


def score_inputs(
    scorer: Scorer,
    items: Sequence[InputItem],
    writer: RecordWriter,
    *,
    progress: bool,
    pools: Sequence[str] = (),
    snippets: SnippetTable | None = None,
) -> list[VideoResult]:
    """Score every item not already in the output, writing each record as it finishes (its
    snippet rows first, so a record implies its rows; ``snippet_table`` module)."""
    todo = [item for item in items if not writer.has(item.path)]
    if len(todo) < len(items):
        typer.echo(f"{PROG}: resuming: {len(items) - len(todo)} inputs already done", err=True)
    results = []
    with (
        typer.progressbar(
            length=len(todo), label="scoring", file=sys.stderr, hidden=not progress
        ) as bar,
        closing(_results(scorer, todo)) as results_in_order,
    ):
        for scored in results_in_order:
            result = with_pools(scored, pools)
            if snippets is not None:
                snippets.write(result)
            writer.write(result)
            results.append(result)
            echo_problems(PROG, result)
            bar.update(1)
    return results


def _results(scorer: Scorer, items: Sequence[InputItem]) -> Generator[VideoResult, None, None]:
    """One result per item, in order: inputs that named nothing fail, the rest are scored
    by the pipeline (decoding of later videos overlaps inference of earlier ones)."""
    with closing(scorer.score_many(i.path for i in items if i.error is None)) as scored:
        for item in items:
            yield failed(item.path, item.error) if item.error else next(scored)


def _print_schema(value: bool) -> None:
    if value:
        typer.echo(record_schema_text(), nl=False)
        raise typer.Exit(EXIT_OK)


def _parse_pools(text: str) -> tuple[str, ...]:
    try:
        return parse_pools(text)
    except ValueError as exc:
        usage_error(str(exc))


def _check_per_snippet(path: Path) -> None:
    try:
        check_path(path)
    except HekeError as exc:
        usage_error(str(exc))


@app.command()
def run(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Video files, folders (searched recursively by video extension), globs, "
            "lists of paths (@list.txt or any .txt, one path per line), URLs (https://, "
            "rtmp://, .m3u8), or - for standard input.",
            show_default=False,
        ),
    ],
    engine: Annotated[
        Path,
        typer.Option(
            "--engine",
            "-e",
            help=".onnx or .plan engine (with its .json sidecar); for the torch backend an "
            "authors' checkpoint (.pkl/.pt) or demo:<model> (demo weights).",
        ),
    ],
    regressor: Annotated[
        Path | None, typer.Option(help="Fine-tuned regressor .npz (adds the 'regressor' score).")
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Results file: JSON lines (.jsonl), or CSV (.csv); '-' = stdout."
        ),
    ] = None,
    snippets: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Snippets per video: 12 (authors' setting for raw/synthetic sets) or 10 "
            "(in-the-wild files). Default: the engine's (12; 20 frame pairs for resnet).",
        ),
    ] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT of raw .yuv inputs.")] = None,
    pix_fmt: Annotated[
        str,
        typer.Option(
            help="Pixel format of raw .yuv inputs: yuv420p, yuv422p, yuv444p, yuv420p10le, or "
            "any planar format's FFmpeg name."
        ),
    ] = "yuv420p",
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip inputs already recorded in --output; append.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --output file.")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(help="Draw per-snippet timelines to this PNG (needs the plot extra)."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help=f"One of {', '.join(BACKENDS)}. Default: from the engine suffix."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help="Snippets per inference call, grouped across videos of the same frame size. "
            "Default: 1 on CPU (ONNX Runtime or torch: larger batches cost memory, not time; "
            "2 for INT8 graphs, whose integer kernels gain from it), "
            f"{DEFAULT_BATCH_SIZE} on GPUs.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            show_default=False,
            help="Decoding threads feeding the engine. Default: this machine's cores. "
            "0: no pipeline (decode, then infer, one video at a time).",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            show_default=False,
            help=f"{TIMEOUT_HELP} Needs the pipeline (--workers 1 or more).",
        ),
    ] = None,
    stream_seconds: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            show_default=False,
            help="Read at most this many seconds of a stream read through FFmpeg (rtmp://, "
            "rtsp://, tcp://, .m3u8), then score it: a live stream may never end. Default: "
            "to its end. Files, http(s) downloads and standard input are read whole.",
        ),
    ] = None,
    on_damage: Annotated[str, typer.Option(metavar="fail|conceal", help=ON_DAMAGE_HELP)] = "fail",
    hdr: Annotated[str, typer.Option(metavar="tonemap|as-is", help=HDR_HELP)] = DEFAULT_HDR,
    threads: Annotated[
        int | None,
        typer.Option(min=0, help="ONNX Runtime (0 = all cores) or torch CPU threads."),
    ] = None,
    pool: Annotated[
        str,
        typer.Option(
            help=f"Poolings over snippets, comma separated: {POOLS_HELP} Each one gives every "
            "head, the ensemble and the regressor a value in the record and the table."
        ),
    ] = "mean",
    per_snippet: Annotated[
        Path | None,
        typer.Option(
            help="Also write one row per snippet (path, index, times, frames, heads, ensemble, "
            "regressor) to this .csv or .parquet file."
        ),
    ] = None,
    schema: Annotated[
        bool,
        typer.Option(
            "--schema",
            is_eager=True,
            expose_value=False,
            callback=_print_schema,
            help="Print the JSON Schema of a record and exit.",
        ),
    ] = False,
) -> None:
    """Score videos; records stream to --output as each video finishes, a table ends the run."""
    dims = common.raw_size(PROG, size, pix_fmt)
    pools = _parse_pools(pool)
    if per_snippet is not None:
        _check_per_snippet(per_snippet)
    common.check_timeout(PROG, timeout)
    if stream_seconds is not None and not stream_seconds > 0:
        usage_error(f"--stream-seconds {stream_seconds:g}: expected seconds, more than 0")
    if timeout is not None and workers == 0:  # decoding in this thread cannot be given up on
        usage_error("--timeout needs the pipeline (--workers 1 or more)")
    if on_damage not in ("fail", "conceal"):
        usage_error(f"--on-damage must be 'fail' or 'conceal', got {on_damage!r}")
    if hdr not in HDR_CHOICES:
        usage_error(f"--hdr must be 'tonemap' or 'as-is', got {hdr!r}")
    backend = check_options(engine, regressor, backend, output, resume)
    if plot is not None:
        _require_plot()
    items = expand_inputs(inputs)
    if not any(item.error is None for item in items):
        for item in items:
            typer.echo(f"{PROG}: {item.path}: {item.error}", err=True)
        usage_error("no videos to score")
    target = None if output in (None, "-") else Path(output)
    try:
        scorer = Scorer(
            engine,
            regressor,
            num_snippets=snippets,
            batch_size=batch_size,
            backend=backend,
            size=dims,
            threads=threads,
            workers=workers,
            timeout=timeout,
            on_damage=cast("OnDamage", on_damage),
            hdr=cast("HdrMode", hdr),
            stream_seconds=stream_seconds,
        )
    except HekeError as exc:
        common.failure(PROG, exc)
    outputs = Outputs(target, resume, overwrite, pools, per_snippet)
    results = _run(scorer, items, outputs)
    _report(results, to_stderr=output == "-")
    if plot is not None:
        _plot(results, plot)
    raise typer.Exit(EXIT_OK if all(r.ok for r in results) else EXIT_FAILED)


@dataclass(frozen=True)
class Outputs:
    """Where results go: records (``target``; None = stdout), snippet rows, poolings."""

    target: Path | None
    resume: bool
    overwrite: bool
    pools: tuple[str, ...] = ()
    per_snippet: Path | None = None


def _run(scorer: Scorer, items: list[InputItem], outputs: Outputs) -> list[VideoResult]:
    with ExitStack() as stack:
        writer, snippets = _open_outputs(outputs, stack)
        try:
            with scorer:
                typer.echo(f"{PROG}: {_describe(scorer)}", err=True)
                return score_inputs(
                    scorer,
                    items,
                    writer,
                    progress=sys.stderr.isatty(),
                    pools=outputs.pools,
                    snippets=snippets,
                )
        except HekeError as exc:  # the engine cannot run, or an output cannot be written
            common.failure(PROG, exc)
    raise AssertionError("unreachable")  # the with block returns or exits


def _open_outputs(outputs: Outputs, stack: ExitStack) -> tuple[RecordWriter, SnippetTable | None]:
    """Open the records and the snippet table; one we may not write or resume is a usage
    error. Closed by ``stack`` whatever happens."""
    writer = RecordWriter(
        outputs.target, resume=outputs.resume, overwrite=outputs.overwrite, pools=outputs.pools
    )
    try:
        stack.enter_context(writer)
        if outputs.per_snippet is None:
            return writer, None
        table = SnippetTable(
            outputs.per_snippet,
            resume=outputs.resume,
            overwrite=outputs.overwrite,
            keep=set(writer.done),
        )
        return writer, stack.enter_context(table)
    except (HekeError, OSError) as exc:
        usage_error(str(exc))


def _describe(scorer: Scorer) -> str:
    side = scorer.sidecar
    weights = (
        "DEMO weights (scores are not quality predictions)"
        if side.demo_weights
        else (f"weights {side.weights_sha256[:12]}")
    )
    return (
        f"{scorer.engine_path.name}: {side.model} {side.precision}, {weights}; "
        f"running on {scorer.device}; {scorer.num_snippets} snippets per video"
    )


def _report(results: list[VideoResult], *, to_stderr: bool) -> None:
    if results:
        typer.echo(format_table(results), err=to_stderr)
    else:
        typer.echo(f"{PROG}: nothing to do: every input is already in the output", err=True)


def _require_plot() -> None:
    from heke_runtime.plot import require_matplotlib

    try:
        require_matplotlib()
    except HekeError as exc:
        usage_error(str(exc))


def _plot(results: list[VideoResult], path: Path) -> None:
    from heke_runtime.plot import plot_timelines

    try:
        plot_timelines(results, path)
    except HekeError as exc:
        typer.echo(f"{PROG}: plot: {exc}", err=True)
        return
    typer.echo(f"{PROG}: timelines drawn to {path}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status instead of exiting (``heke-run`` exits with it)."""
    return run_app(app, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())
