"""What every heke command line shares: exit statuses, one-line errors, the ``--size``
parser, the per-video problem lines, and an entry point that returns its exit status.

Exit status everywhere: 0 done, 1 something failed (one line on stderr, no traceback),
2 a usage error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

import typer

from heke_runtime.errors import HekeError
from heke_runtime.results import VideoResult, one_line

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TIMEOUT_HELP = (
    "Give up on a video whose decoding takes longer than SECONDS (an error record; the rest "
    "go on). Default: no limit, since an hour of 4K can rightly take minutes."
)


def new_app(help_text: str | None = None) -> typer.Typer:
    """A Typer app without shell-completion options or local variables in tracebacks."""
    return typer.Typer(add_completion=False, pretty_exceptions_show_locals=False, help=help_text)


def usage_error(prog: str, message: str) -> NoReturn:
    typer.echo(f"{prog}: error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE) from None  # callers in an except block: no chained cause


def failure(prog: str, message: object) -> NoReturn:
    """Stop with exit status 1 and the reason on one line."""
    typer.echo(f"{prog}: error: {message}", err=True)
    raise typer.Exit(EXIT_FAILED) from None


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """A :class:`HekeError` or an ``OSError`` becomes one line on stderr and exit status 1."""
    try:
        yield
    except HekeError as exc:
        failure(prog, one_line(str(exc)))
    except OSError as exc:  # an output folder that does not exist, a full disk, ...
        where = f"{exc.filename}: " if exc.filename else ""
        failure(prog, f"{where}{exc.strerror or exc}")


def size_from_text(text: str | None) -> tuple[int, int] | None:
    """``"WxH"`` -> ``(W, H)``; ``ValueError`` with the --size message otherwise."""
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 768x432")
    return int(parts[0]), int(parts[1])


def parse_size(prog: str, text: str | None) -> tuple[int, int] | None:
    """:func:`size_from_text`, a bad value being a usage error."""
    try:
        return size_from_text(text)
    except ValueError as exc:
        usage_error(prog, str(exc))


def check_timeout(prog: str, seconds: float | None) -> None:
    """``--timeout`` must be a positive number of seconds (NaN is refused too)."""
    if seconds is not None and not seconds > 0:
        usage_error(prog, f"--timeout {seconds:g}: expected seconds, more than 0")


def echo_problems(prog: str, result: VideoResult) -> None:
    """A failed video's reason and every warning, one line each on stderr."""
    if not result.ok:
        typer.echo(f"{prog}: FAILED {result.path}: {result.error}", err=True)
    for warning in result.warnings:
        typer.echo(f"{prog}: warning: {result.path}: {warning}", err=True)


def run_app(app: typer.Typer, prog: str, argv: Sequence[str] | None) -> int:
    """Run ``app`` and return its exit status instead of exiting (tests call this)."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name=prog)
    except SystemExit as exc:  # typer/click report usage errors with status 2 this way
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_FAILED)
    return EXIT_OK
