"""``heke-serve``: the scoring service on uvicorn (loopback unless told otherwise).

Exit status: 0 after a clean stop (SIGTERM or Ctrl-C: requests and jobs in flight finish,
new requests get 503, then the process exits), 1 the engine or a file cannot be read,
2 usage errors.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, cast

import typer
import uvicorn
from fastapi import FastAPI

from heke_runtime import cli_common as common
from heke_runtime.backends import BACKENDS
from heke_runtime.cli_common import new_app, run_app
from heke_runtime.errors import HekeError
from heke_runtime.hdr import DEFAULT_HDR, HDR_CHOICES, HdrMode
from heke_runtime.pipeline import default_workers
from heke_runtime.scorer import Scorer, default_batch_size
from heke_serve.app import ServeOptions, State, create_app
from heke_serve.metrics import Metrics
from heke_serve.service import ScoringService, ServiceLimits

if TYPE_CHECKING:
    from heke_runtime.decode import OnDamage

PROG = "heke-serve"
app = new_app("Score videos over HTTP with a HEKE engine: the records heke-run writes.")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (``heke-serve`` exits with it)."""
    return run_app(app, PROG, argv)


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        common.usage_error(PROG, f"--token-file {path}: {exc.strerror or exc}")
    if not token:
        common.usage_error(PROG, f"--token-file {path}: the file is empty")
    return token


def _check_folders(folders: list[Path]) -> tuple[Path, ...]:
    for folder in folders:
        if not folder.is_dir():
            common.usage_error(PROG, f"--allow-path {folder}: not a folder")
    return tuple(folders)


@app.command()
def serve(
    engine: Annotated[
        Path,
        typer.Option("--engine", "-e", help=".onnx or .plan engine (with its .json sidecar)."),
    ],
    regressor: Annotated[
        Path | None, typer.Option(help="Fine-tuned regressor .npz (adds the 'regressor' score).")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help=f"One of {', '.join(BACKENDS)}. Default: from the engine suffix."),
    ] = None,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on. Anything but loopback exposes the service."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8000,
    max_batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help="Snippets per engine call, shared across concurrent requests. Default: the "
            "backend's (1 on CPU, 4 on GPUs).",
        ),
    ] = None,
    batch_delay_ms: Annotated[
        float,
        typer.Option(
            min=0, help="How long a batch that is not full waits for other requests' snippets."
        ),
    ] = 5.0,
    decode_workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help="Decoding threads. Default: the cores; with --ray, 1 per replica (each "
            "replica reserves a CPU per thread).",
        ),
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help="Videos in progress at once (uploading, decoding, scoring, jobs); one more "
            "gets 429 with Retry-After. Default: 4 per decoding thread.",
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option(min=0, help="Largest upload; a larger one gets 413.")
    ] = 2048.0,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding the bearer token that /v1 requests must carry."),
    ] = None,
    allow_path: Annotated[
        list[Path] | None,
        typer.Option(
            help="Folder whose files a JSON request may name by path (repeatable); none by "
            "default. Symlinks and '..' are resolved before the check."
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Give up on a video whose decoding takes longer."),
    ] = 600.0,
    max_jobs: Annotated[
        int, typer.Option(min=1, help="Jobs kept in memory (finished ones make room).")
    ] = 1000,
    job_ttl: Annotated[
        float, typer.Option(min=1, help="Seconds a finished job's record is kept.")
    ] = 3600.0,
    drain_timeout: Annotated[
        float,
        typer.Option(min=0, help="Seconds SIGTERM waits for requests and jobs in flight."),
    ] = 60.0,
    on_damage: Annotated[
        str, typer.Option(metavar="fail|conceal", help="As heke-run --on-damage.")
    ] = "fail",
    hdr: Annotated[
        str, typer.Option(metavar="tonemap|as-is", help="As heke-run --hdr.")
    ] = DEFAULT_HDR,
    threads: Annotated[
        int | None, typer.Option(min=0, help="ONNX Runtime threads (0 = all cores).")
    ] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run as a Ray Serve application: one ingress and --replicas scoring "
            "replicas (the serve-ray extra). --max-batch, --decode-workers and --max-queue "
            "are then per replica.",
        ),
    ] = False,
    replicas: Annotated[int, typer.Option(min=1, help="With --ray: scoring replicas.")] = 2,
    ray_address: Annotated[
        str | None,
        typer.Option(
            metavar="ADDR",
            help="With --ray: the Ray cluster to join. Default: RAY_ADDRESS, else a new local "
            "Ray instance.",
        ),
    ] = None,
    replica_gpus: Annotated[
        float, typer.Option(min=0, help="With --ray: GPUs per scoring replica (0: CPU engines).")
    ] = 0.0,
) -> None:
    """Serve POST /v1/score, /v1/jobs, a page at /, /healthz, /readyz, /metrics and /docs."""
    common.check_timeout(PROG, timeout)
    if on_damage not in ("fail", "conceal"):
        common.usage_error(PROG, f"--on-damage must be 'fail' or 'conceal', got {on_damage!r}")
    if hdr not in HDR_CHOICES:
        common.usage_error(PROG, f"--hdr must be 'tonemap' or 'as-is', got {hdr!r}")
    if not engine.exists():
        common.usage_error(PROG, f"--engine {engine}: no such file")
    if ray:
        _check_ray_serve()
    options = ServeOptions(
        max_upload_mb=max_upload_mb,
        token=_read_token(token_file),
        allow_paths=_check_folders(allow_path or []),
        max_jobs=max_jobs,
        job_ttl_s=job_ttl,
    )
    workers = decode_workers or (1 if ray else default_workers())
    try:
        scorer = Scorer(
            engine,
            regressor,
            backend=backend,
            threads=threads,
            workers=0,
            on_damage=cast("OnDamage", on_damage),
            hdr=cast("HdrMode", hdr),
        )
    except HekeError as exc:
        common.failure(PROG, exc)
    limits = ServiceLimits(
        max_batch=max_batch or default_batch_size(scorer.backend),
        batch_delay_s=batch_delay_ms / 1000,
        decode_workers=workers,
        max_queue=max_queue or 4 * workers,
        timeout_s=timeout,
    )
    if ray:
        from heke_serve import ray_serve  # Ray loads for --ray only

        # Absolute: replicas on other nodes open the same paths from their own folders.
        settings = ray_serve.ScorerSettings(
            str(engine.resolve()),
            limits,
            str(regressor.resolve()) if regressor else None,
            backend,
            threads,
            cast("OnDamage", on_damage),
            cast("HdrMode", hdr),
        )
        placement = ray_serve.RayOptions(replicas, ray_address, replica_gpus)
        with common.user_errors(PROG):
            ray_serve.serve_until_stopped(
                settings, options, placement, (host, port), drain_timeout, _say
            )
        return
    service = ScoringService(scorer, limits, Metrics())
    _run_server(create_app(service, options), host, port, drain_timeout)


def _check_ray_serve() -> None:
    from heke_serve.ray_serve import RayServeMissingError, require_ray_serve

    try:
        require_ray_serve()
    except RayServeMissingError as exc:
        common.usage_error(PROG, str(exc))


def _say(line: str) -> None:
    typer.echo(f"{PROG}: {line}", err=True)


def _run_server(api: FastAPI, host: str, port: int, drain_s: float) -> None:
    config = uvicorn.Config(api, host=host, port=port, log_level="info", access_log=False)
    # The socket is heke's, not uvicorn.Config.bind_socket's, which logs its own line and
    # exits when the port is taken. Listening from here on, as the line below says: a client
    # that connects while the engine loads waits in the backlog instead of being refused.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=config.backlog)
    except OSError as exc:  # create_server adds the address to strerror: the plain text
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        common.failure(PROG, f"cannot listen on {host}:{port}: {reason}")
    bound = sock.getsockname()[1]
    where = f"[{host}]" if ":" in host else host
    typer.echo(f"{PROG}: listening on http://{where}:{bound} (page /, API docs /docs)", err=True)
    state = cast("State", api.state.heke)
    _DrainingServer(config, state, drain_s).run(sockets=[sock])


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, but the first SIGTERM/SIGINT drains: new requests get 503 while those
    in flight and accepted jobs finish (up to ``drain_s``), then it stops as uvicorn does, and
    the process exits 0. A second signal stops at once, as uvicorn's own handling does."""

    def __init__(self, config: uvicorn.Config, state: State, drain_s: float) -> None:
        super().__init__(config)
        self.state, self.drain_s = state, drain_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.draining:
            super().handle_exit(sig, frame)
            return
        self.state.draining = True
        name = signal.Signals(sig).name
        typer.echo(f"{PROG}: {name}: finishing work in flight, refusing new requests", err=True)
        threading.Thread(target=self._drain, name="heke-drain", daemon=True).start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_s
        while self.state.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.state.busy()
        if left:
            typer.echo(f"{PROG}: gave up waiting for {left} requests or jobs", err=True)
        self.should_exit = True


if __name__ == "__main__":
    sys.exit(main())
