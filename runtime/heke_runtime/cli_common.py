"""What every heke command line shares: the app (plain help, ``--version``), exit statuses,
one-line errors, the ``--size`` parser, the per-video problem lines, and an entry point that
returns its exit status.

Exit status everywhere: 0 done, 1 something failed (one line on stderr, no traceback),
2 a usage error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import typer.core
import typer.main

from heke_runtime.errors import HekeError
from heke_runtime.results import VideoResult, one_line
from heke_runtime.version import heke_version
from heke_runtime.yuv import RawSize, check_raw_pix_fmt

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TIMEOUT_HELP = (
    "Give up on a video whose decoding takes longer than SECONDS (an error record; the rest "
    "go on). Default: no limit, since an hour of 4K can rightly take minutes."
)


def _print_version(ctx: typer.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        typer.echo(f"{ctx.find_root().info_name} {heke_version()}")
        raise typer.Exit(EXIT_OK)


# Eager: it answers before any other option or argument is checked, as click's own does.
VersionOption = Annotated[
    bool,
    typer.Option(
        "--version",
        is_eager=True,
        expose_value=False,
        callback=_print_version,
        help="Print the program's name and heke's version, and exit.",
    ),
]


def _version_option() -> typer.core.TyperOption:
    """:data:`VersionOption` as the option object typer builds from it (typer's public API
    only: a throwaway one-command app), to be appended to a command's parameters as typer
    appends its own completion options."""
    probe = typer.Typer()

    @probe.command()
    def probe_command(version: VersionOption = False) -> None:
        """Never run."""

    option = typer.main.get_command(probe).params[0]
    if not isinstance(option, typer.core.TyperOption):  # only if typer changes how it builds
        raise TypeError(f"typer built {type(option).__name__} for --version, not an option")
    return option


class _VersionedCommand(typer.core.TyperCommand):
    """A command with ``--version``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(_version_option())


class _VersionedGroup(typer.core.TyperGroup):
    """A group of commands with ``--version`` (``heke-features --version``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.params.append(_version_option())


_Function = TypeVar("_Function", bound=Callable[..., Any])


class _HekeTyper(typer.Typer):
    """``typer.Typer`` whose commands are :class:`_VersionedCommand` unless told otherwise.

    A typer callback would add ``--version`` too, but it turns a one-command app into a group
    that wants the command's name first, so the option joins each command instead.
    """

    def command(
        self,
        name: str | None = None,
        *,
        cls: type[typer.core.TyperCommand] | None = None,
        **kwargs: Any,
    ) -> Callable[[_Function], _Function]:
        return super().command(name, cls=cls or _VersionedCommand, **kwargs)


def new_app(help_text: str | None = None) -> typer.Typer:
    """A Typer app for a heke command: ``--version`` on it and on each of its commands; plain
    click help (``rich_markup_mode=None``: a flag reads ``--resume``, not ``--resume <bool>``);
    no shell-completion options; no local variables in tracebacks."""
    return _HekeTyper(
        cls=_VersionedGroup,
        add_completion=False,
        pretty_exceptions_show_locals=False,
        rich_markup_mode=None,
        help=help_text,
    )


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


def raw_size(prog: str, text: str | None, pix_fmt: str) -> tuple[int, int] | None:
    """``--size`` and ``--pix-fmt`` as the size raw inputs are read with; a bad value of
    either is a usage error."""
    try:
        check_raw_pix_fmt(pix_fmt)
        size = size_from_text(text)
    except ValueError as exc:
        usage_error(prog, str(exc))
    return None if size is None else RawSize(*size, pix_fmt)


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
