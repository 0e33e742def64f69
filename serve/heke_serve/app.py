"""The HTTP API: FastAPI routes over :class:`~heke_serve.service.ScoringService`.

Every refusal is a JSON body ``{"error": "<one line>"}`` with its status (the README's
Serving section lists them); a video that fails to score also carries the record heke-run
would write for it. Routes under ``/v1`` need the bearer token when one is set; the page,
``/healthz``, ``/readyz``, ``/metrics`` and the API docs do not (probes and scrapers carry no
secrets, and they reveal no scores).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from heke_runtime.results import one_line
from heke_runtime.version import heke_version
from heke_serve.jobs import Job, JobStore, JobStoreFullError
from heke_serve.metrics import Metrics
from heke_serve.service import RETRY_AFTER_S, Scored, ScoringService, check_snippets
from heke_serve.uploads import RequestError, Upload, upload_file

MB = 2**20
SCORE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"video": {"type": "string", "format": "binary"}},
                    "required": ["video"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}},
                    "required": ["path"],
                }
            },
        },
    }
}


@dataclass
class ServeOptions:
    """The request-side settings of ``heke-serve`` (the service's own are ServiceLimits)."""

    max_upload_mb: float = 2048
    token: str | None = None
    allow_paths: Sequence[Path] = ()
    max_jobs: int = 1000
    job_ttl_s: float = 3600
    load_in_background: bool = True


@dataclass
class State:
    """What the routes share: the service, jobs, the drain flag and the work in flight."""

    service: ScoringService
    options: ServeOptions
    metrics: Metrics
    jobs: JobStore
    uploads: Path
    draining: bool = False
    in_flight: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def busy(self) -> int:
        """Requests being answered plus jobs still running (what a drain waits for)."""
        with self.lock:
            return self.in_flight + len(self.tasks)


def create_app(service: ScoringService, options: ServeOptions) -> FastAPI:
    """The app; the engine loads when it starts (in the background unless told otherwise)."""
    uploads = Path(tempfile.mkdtemp(prefix="heke-serve-"))
    state = State(
        service, options, service.metrics, JobStore(options.max_jobs, options.job_ttl_s), uploads
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = threading.Thread(target=_start_quietly, args=(service,), name="heke-load")
        loader.start()
        if not options.load_in_background:
            await asyncio.to_thread(loader.join)
        try:
            yield
        finally:
            await asyncio.to_thread(loader.join)
            service.close()
            shutil.rmtree(uploads, ignore_errors=True)

    app = FastAPI(
        title="heke-serve",
        version=heke_version(),
        summary="Blind video quality (HEKE) as a service: the records heke-run writes.",
        lifespan=lifespan,
    )
    app.state.heke = state
    _add_handlers(app, state)
    _add_probes(app, state)
    _add_scoring(app, state)
    _add_page(app)
    return app


def _start_quietly(service: ScoringService) -> None:
    # A failure is kept in service.load_error for /readyz: the process stays up to say so.
    with contextlib.suppress(Exception):
        service.start()


# --------------------------------------------------------------------------- errors, drain


def error_response(status: int, error: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
    return JSONResponse({"error": one_line(error), **extra}, status_code=status, headers=headers)


def _add_handlers(app: FastAPI, state: State) -> None:
    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> Response:
        response = error_response(exc.status, exc.reason)
        response.headers.update(exc.headers)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        where = ", ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return error_response(422, f"bad request: {where}")

    @app.middleware("http")
    async def account(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if state.draining and request.url.path != "/healthz":
            return error_response(503, "the server is shutting down")
        with state.lock:
            state.in_flight += 1
        start = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            with state.lock:
                state.in_flight -= 1
        route = getattr(request.scope.get("route"), "path", "unmatched")
        state.metrics.requests.labels(route, str(response.status_code)).inc()
        state.metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response


def check_token(state: State, request: Request) -> None:
    expected = state.options.token
    if expected is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), expected):
        raise RequestError(401, "missing or wrong bearer token (Authorization: Bearer ...)")


# --------------------------------------------------------------------------- probes


def _add_probes(app: FastAPI, state: State) -> None:
    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="The engine is loaded and warmed up")
    async def readyz() -> Response:
        service = state.service
        if state.draining:
            return error_response(503, "the server is shutting down")
        if not service.ready.is_set():
            return error_response(503, service.load_error or "the engine is still loading")
        return JSONResponse({"status": "ready", **service.describe(), "version": heke_version()})

    @app.get("/metrics", summary="Prometheus metrics (heke_*)")
    async def metrics() -> Response:
        return Response(state.metrics.text(), media_type="text/plain; version=0.0.4")


# --------------------------------------------------------------------------- scoring


def _add_scoring(app: FastAPI, state: State) -> None:
    snippets_query = Query(
        None, description="Snippets per video: 10 (the authors' in-the-wild setting) or 12"
    )

    @app.post(
        "/v1/score", summary="Score one video; answers heke-run's record", openapi_extra=SCORE_BODY
    )
    async def score(request: Request, snippets: int | None = snippets_query) -> Response:
        check_token(state, request)
        count = check_snippets(snippets)
        with state.service.admission():
            async with _video_input(state, request) as video:
                scored = await state.service.score(video.path, video.name, count)
        return _scored_response(scored)

    @app.post(
        "/v1/jobs",
        status_code=202,
        summary="Score one video later; answers a job id",
        openapi_extra=SCORE_BODY,
    )
    async def submit(request: Request, snippets: int | None = snippets_query) -> Response:
        check_token(state, request)
        count = check_snippets(snippets)
        job, video, release = await _accept_job(state, request)
        task = asyncio.create_task(_run_job(state, job, video, count, release))
        with state.lock:
            state.tasks.add(task)
        task.add_done_callback(lambda done: _forget(state, done))
        body = {"id": job.id, "status": job.status, "url": f"/v1/jobs/{job.id}"}
        return JSONResponse(body, status_code=202, headers={"Location": body["url"]})

    @app.get("/v1/jobs/{job_id}", summary="A job's status, then its record")
    async def job_status(request: Request, job_id: str) -> Response:
        check_token(state, request)
        job = state.jobs.get(job_id)
        if job is None:
            raise RequestError(404, f"no job {job_id} (unknown, or forgotten after its time)")
        return JSONResponse(job.view())


def _scored_response(scored: Scored) -> Response:
    if scored.status == 200:
        return JSONResponse(scored.record)
    return error_response(scored.status, scored.error or "failed", record=scored.record)


async def _accept_job(state: State, request: Request) -> tuple[Job, Upload, ExitStack]:
    """The job's entry in the store, its input, and what to release when the job ends: its
    admission slot and, for an upload, the file the job owns from now on."""
    with ExitStack() as release:
        release.enter_context(state.service.admission())
        async with _video_input(state, request) as video:
            kept = _keep(state, video)
        if kept.path != video.path:
            release.callback(kept.path.unlink, missing_ok=True)
        try:
            job = state.jobs.create(video.name)
        except JobStoreFullError as exc:
            raise RequestError(429, str(exc)) from None
        return job, kept, release.pop_all()


def _keep(state: State, video: Upload) -> Upload:
    """An uploaded file renamed so that leaving the upload's context does not delete it."""
    if video.path.parent != state.uploads:
        return video  # a server-side file named by path: nothing to keep
    kept = video.path.with_name("job-" + video.path.name)
    video.path.rename(kept)
    return Upload(kept, video.name)


async def _run_job(
    state: State, job: Job, video: Upload, count: int | None, release: ExitStack
) -> None:
    with release:
        try:
            state.jobs.start(job)
            scored = await state.service.score(video.path, video.name, count)
            state.jobs.finish(job, scored.status, scored.record, scored.error)
        except Exception as exc:  # never a job left "running" forever
            state.jobs.finish(job, 500, None, f"{video.name}: {type(exc).__name__}: {exc}")


def _forget(state: State, task: asyncio.Task[None]) -> None:
    with state.lock:
        state.tasks.discard(task)


@asynccontextmanager
async def _video_input(state: State, request: Request) -> AsyncIterator[Upload]:
    """The request's video: an upload (deleted afterwards) or an allowed server-side path."""
    if request.headers.get("content-type", "").startswith("application/json"):
        given = await _given_path(request)
        yield Upload(allowed(given, state.options.allow_paths), given)
        return
    limit = int(state.options.max_upload_mb * MB)
    async with upload_file(request, state.uploads, limit, prefix="upload-") as video:
        yield video


async def _given_path(request: Request) -> str:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise RequestError(422, f"the JSON body does not parse: {exc}") from None
    given = body.get("path") if isinstance(body, dict) else None
    if not isinstance(given, str) or not given:
        raise RequestError(422, 'the JSON body has no "path" (a string)')
    return given


def allowed(given: str, roots: Sequence[Path]) -> Path:
    """``given`` resolved (symlinks and ``..`` followed), if it lies under an allowed root."""
    if not roots:
        raise RequestError(403, f"{given}: the server allows no paths (heke-serve --allow-path)")
    if "://" in given:
        raise RequestError(403, f"{given}: only server-side files are scored by path")
    real = Path(os.path.realpath(given))
    if not any(real.is_relative_to(os.path.realpath(root)) for root in roots):
        raise RequestError(403, f"{given}: outside the folders this server allows")
    return real


# --------------------------------------------------------------------------- the page


def _add_page(app: FastAPI) -> None:
    static = resources.files("heke_serve") / "static"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text())

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
