"""``heke-serve --ray``: the same service as a Ray Serve application on a Ray cluster.

Two deployments:

- ``HekeIngress``, one replica, runs the FastAPI app of :mod:`heke_serve.app` itself (the
  same routes, refusals, admission with 429, jobs, metrics and drain) over a
  :class:`RayScoringService`, which sends each admitted video to the scoring deployment
  instead of scoring it in-process. One replica, because jobs live in its memory: every
  ``GET /v1/jobs/{id}`` must reach the replica that accepted the job (and, as with the
  single-machine server, nothing survives its restart).
- ``HekeScorer``, ``--replicas`` replicas, runs heke-run's steps on each video
  (docs/ARCHITECTURE.md, "The trip of one video"): ``Scorer.decode`` in the replica's
  decoding threads, the engine, then ``Scorer.result``. It is the single-machine
  :class:`~heke_serve.service.ScoringService` with one part replaced: the snippets of the
  videos in flight on a replica are grouped by Ray Serve's ``@serve.batch`` (up to
  ``--max-batch`` per engine call, waiting at most ``--batch-delay-ms``) instead of the
  service's own batcher. The records are therefore heke-run's for the same file.

A video travels to its replica as the file's bytes, not as decoded arrays: a compressed
video is far smaller than the float32 snippets decoded from it, so less crosses the
network and Ray's object store, and decoding, most of the CPU a video costs, runs on the
scoring replicas and grows with them instead of piling up in the one ingress. Bytes also
reach a replica on any node, where the ingress's temporary upload file does not exist.

A replica that dies with videos in flight (its process killed, its node lost): each such
video is sent once more, to another replica (Serve's router stops choosing a replica it saw
die); a second loss fails the video with a one-line reason and 503, so a job ends
``failed`` with that reason, never lost. ``/readyz`` also tells how many videos each
replica answered and how many were sent again.

Ray is imported only inside functions here, and this module only by ``heke-serve --ray``:
the plain service needs no Ray (docs/ARCHITECTURE.md, "Packages").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI

from heke_runtime.errors import HekeError
from heke_runtime.hdr import DEFAULT_HDR, HdrMode
from heke_runtime.pipeline import shape_key
from heke_runtime.results import one_line
from heke_runtime.scorer import Scorer, error_reason
from heke_serve.app import ServeOptions, State, create_app
from heke_serve.metrics import Metrics
from heke_serve.service import Scored, ScoringService, ServiceLimits
from heke_serve.uploads import safe_suffix

if TYPE_CHECKING:
    from heke_runtime.decode import OnDamage

SERVE_RAY_EXTRA = "pip install 'heke[serve-ray]'"
APP_NAME = "heke"
INGRESS, SCORER = "HekeIngress", "HekeScorer"
LOST_STATUS = 503  # the video is fine; the service lost the machines scoring it
# Requests the ingress takes beyond the videos it admits (probes, job polls, refusals):
# what Serve holds in front of the ingress never reaches the admission that answers 429.
INGRESS_EXTRA_REQUESTS = 64
START_TIMEOUT_S = 600.0  # how long the ingress waits for a first scoring replica to answer

Arrays = dict[str, np.ndarray]


class RayServeMissingError(HekeError, ImportError):
    """Ray Serve (the ``serve-ray`` extra) is not installed."""


class RayDeployError(HekeError, RuntimeError):
    """The Serve application did not start (an engine that does not load on a replica)."""


class ReplicaLostError(HekeError, RuntimeError):
    """The replicas scoring a video died, on its first try and on its retry."""


def require_ray_serve() -> ModuleType:
    """``ray.serve``, or an error that names the extra to install."""
    try:
        from ray import serve
    except ImportError as exc:
        raise RayServeMissingError(
            f"--ray needs Ray Serve ({one_line(str(exc))}); install it with {SERVE_RAY_EXTRA}"
        ) from None
    return serve


def _lost_errors() -> tuple[type[BaseException], ...]:
    """What a call to a replica raises when the replica, not the video, failed."""
    from ray.exceptions import RayActorError  # ActorDiedError, ActorUnavailableError
    from ray.serve.exceptions import ReplicaUnavailableError

    return (RayActorError, ReplicaUnavailableError)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ScorerSettings:
    """What each scoring replica builds its Scorer and service from: plain data that
    crosses to any node (the engine loads once per replica, from the same path on every
    node, as heke-corpus's actors do). ``limits`` are one replica's."""

    engine: str
    limits: ServiceLimits
    regressor: str | None = None
    backend: str | None = None
    threads: int | None = None
    on_damage: OnDamage = "fail"
    hdr: HdrMode = DEFAULT_HDR

    def scorer(self) -> Scorer:
        return Scorer(
            self.engine,
            self.regressor,
            backend=self.backend,
            threads=self.threads,
            workers=0,
            on_damage=self.on_damage,
            hdr=self.hdr,
        )


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the application runs (``heke-serve --ray``'s own options)."""

    replicas: int = 2
    address: str | None = None  # None: RAY_ADDRESS, or a new local Ray instance
    replica_gpus: float = 0.0  # one replica's share of a GPU (0: a CPU engine)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {self.replicas}")


@dataclass(frozen=True)
class Answer:
    """A scoring replica's reply for one video."""

    scored: Scored
    replica: str  # "<replica id>@<node id>"
    batches: tuple[tuple[int, int], ...]  # (snippets, videos) of its engine calls since


# --------------------------------------------------------------------------- scoring replicas


@dataclass(frozen=True)
class _Snippet:
    video: int  # which video's (a token, to count the videos sharing an engine call)
    inputs: Mapping[str, np.ndarray]  # one snippet, first axis of length 1


class RayBatchedService(ScoringService):
    """A replica's ScoringService: its engine step goes through ``@serve.batch``, one call
    per snippet, so the snippets of concurrent videos share engine calls (grouped by input
    shape, as only equal shapes stack). One batch runs at a time (``serve.batch``'s default
    ``max_concurrent_batches=1``), so the backend needs no locking, as with the
    single-machine batcher."""

    def __init__(self, scorer: Scorer, limits: ServiceLimits, metrics: Metrics) -> None:
        super().__init__(scorer, limits, metrics)
        serve = require_ray_serve()
        self._snippet = serve.batch(
            max_batch_size=limits.max_batch, batch_wait_timeout_s=limits.batch_delay_s
        )(self._run_batch)
        self.batches: list[tuple[int, int]] = []
        self._videos = 0

    def _new_batcher(self) -> None:
        return None

    def take_batches(self) -> tuple[tuple[int, int], ...]:
        """The engine calls made since the last take (each reported once, to the ingress)."""
        taken, self.batches = tuple(self.batches), []
        return taken

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._videos += 1
        count = int(next(iter(inputs.values())).shape[0])
        parts = await asyncio.gather(
            *(
                self._snippet(_Snippet(self._videos, {k: v[i : i + 1] for k, v in inputs.items()}))
                for i in range(count)
            )
        )
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    async def _run_batch(self, snippets: list[_Snippet]) -> list[Arrays]:
        groups: dict[object, list[int]] = {}
        for i, snippet in enumerate(snippets):
            groups.setdefault(shape_key(snippet.inputs), []).append(i)
        answers: list[Arrays] = [{} for _ in snippets]
        for members in groups.values():
            names = list(snippets[members[0]].inputs)
            batch = {n: np.concatenate([snippets[i].inputs[n] for i in members]) for n in names}
            # The backend blocks; the replica's event loop keeps taking videos meanwhile.
            outputs = await asyncio.to_thread(self.scorer.backend.infer, batch)
            self.batches.append((len(members), len({snippets[i].video for i in members})))
            for row, i in enumerate(members):
                answers[i] = {k: np.asarray(v[row : row + 1]) for k, v in outputs.items()}
        return answers


class HekeScorer:
    """The scoring deployment's class: one engine, decoding threads and Ray's batching."""

    def __init__(self, settings: ScorerSettings) -> None:
        self.service = RayBatchedService(settings.scorer(), settings.limits, Metrics())
        self.service.start()  # an engine that will not load fails the replica, saying why
        self.folder = Path(tempfile.mkdtemp(prefix="heke-serve-replica-"))
        self.name = _replica_name()

    async def score(self, data: bytes, name: str, num_snippets: int | None) -> Answer:
        """The record of the video whose file holds ``data``, named ``name`` by the client."""
        path = await asyncio.to_thread(_spool, data, self.folder, name)
        try:
            scored = await self.service.score(path, name, num_snippets)
        finally:
            path.unlink(missing_ok=True)
        return Answer(scored, self.name, self.service.take_batches())

    def describe(self) -> dict[str, Any]:
        """What ``/readyz`` tells of the engine, and the ``engine`` block of this replica's
        records (an error record's: the ingress writes those for videos it cannot score)."""
        blank = self.service.scorer.failure("", RuntimeError(), time.perf_counter())
        return {**self.service.describe(), "engine_record": blank.to_dict()["engine"]}

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close()
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)


def _replica_name() -> str:
    import ray
    from ray import serve

    replica = serve.get_replica_context().replica_id.unique_id
    return f"{replica}@{ray.get_runtime_context().get_node_id()}"


def _spool(data: bytes, folder: Path, name: str) -> Path:
    """``data`` in a file of the replica's own; the client's extension is kept, since raw
    ``.yuv`` files are read by it (heke_serve.uploads.safe_suffix)."""
    handle, path = tempfile.mkstemp(suffix=safe_suffix(name), prefix="video-", dir=folder)
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    return Path(path)


# --------------------------------------------------------------------------- the ingress


class RayScoringService(ScoringService):
    """The ingress's service: admission, metrics and error records as the single-machine
    service's; each admitted video is scored by a replica of the scoring deployment.

    Its Scorer is never opened (no engine loads in the ingress): it names the engine and
    writes the error records of videos no replica could score, with the replicas' own
    ``engine`` block, so those records read as the replicas' would."""

    def __init__(
        self, scorer: Scorer, limits: ServiceLimits, metrics: Metrics, scorers: Any, replicas: int
    ) -> None:
        super().__init__(scorer, limits, metrics)
        self.scorers, self.replicas = scorers, replicas
        self.about: dict[str, Any] = {}
        self.engine_record: dict[str, Any] | None = None
        self.by_replica: Counter[str] = Counter()
        self.retried = 0

    def start(self) -> None:
        """Waits for a scoring replica to describe the engine (``/readyz`` says 503 until)."""
        try:
            about = self.scorers.describe.remote().result(timeout_s=START_TIMEOUT_S)
        except Exception as exc:
            self.load_error = f"no scoring replica answers: {error_reason(exc)}"
            raise
        self.engine_record = about.pop("engine_record")
        self.about = about
        self.ready.set()

    def describe(self) -> dict[str, Any]:
        return {
            **self.about,
            "max_queue": self.limits.max_queue,  # the ingress's: every replica's together
            "replicas": self.replicas,
            "videos_by_replica": dict(self.by_replica),
            "retried": self.retried,
        }

    async def score(self, path: Path, name: str, num_snippets: int | None = None) -> Scored:
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(self.pool, path.read_bytes)
        except OSError as exc:
            self.metrics.decode_failures.inc()
            return self._failed(str(path), name, exc, start, 422)
        try:
            answer = await self._forward(data, name, num_snippets)
        except ReplicaLostError as exc:
            return self._failed(name, name, exc, start, LOST_STATUS)
        except Exception as exc:  # a replica's own fault: never a job left without a reason
            return self._failed(name, name, exc, start, 500)
        self.by_replica[answer.replica] += 1
        for snippets, videos in answer.batches:
            self.metrics.observe_batch(snippets, videos)
        if answer.scored.status == 200:
            self.metrics.videos_scored.inc()
        elif answer.scored.status == 422:
            self.metrics.decode_failures.inc()
        return answer.scored

    async def _forward(self, data: bytes, name: str, num_snippets: int | None) -> Answer:
        """The replica's answer; a replica lost mid-video costs one more try, elsewhere."""
        lost = _lost_errors()
        try:
            answer: Answer = await self.scorers.score.remote(data, name, num_snippets)
            return answer
        except lost as first:
            self.retried += 1
            logging.getLogger(__name__).warning(
                "%s: its scoring replica died (%s); sending it again", name, type(first).__name__
            )
        try:
            answer = await self.scorers.score.remote(data, name, num_snippets)
            return answer
        except lost as second:
            raise ReplicaLostError(
                f"the scoring replica died twice while scoring this video "
                f"({type(second).__name__}); retry later"
            ) from None

    def _failed(
        self, local: str, name: str, exc: BaseException, start: float, status: int
    ) -> Scored:
        scored = super()._failed(local, name, exc, start, status)
        if self.engine_record is None:
            return scored
        return dataclasses.replace(scored, record={**scored.record, "engine": self.engine_record})


class HekeIngress:
    """The ingress deployment's class: heke_serve.app's FastAPI app over
    :class:`RayScoringService` (Serve runs the app's lifespan: the service starts there)."""

    def __init__(
        self,
        scorers: Any,
        settings: ScorerSettings,
        options: ServeOptions,
        limits: ServiceLimits,
        replicas: int,
    ) -> None:
        service = RayScoringService(settings.scorer(), limits, Metrics(), scorers, replicas)
        self.api = create_app(service, options)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.api

    async def drain(self) -> int:
        """From now on new requests get 503; answers the requests and jobs still in flight
        (``heke-serve --ray`` calls it on SIGTERM until it answers 0)."""
        state: State = self.api.state.heke
        state.draining = True
        return state.busy()


# --------------------------------------------------------------------------- deployment


def build_app(settings: ScorerSettings, options: ServeOptions, ray_options: RayOptions) -> Any:
    """The Serve application: the ingress bound to ``ray_options.replicas`` scorers."""
    serve = require_ray_serve()
    limits = settings.limits
    scorers = serve.deployment(
        HekeScorer,
        name=SCORER,
        num_replicas=ray_options.replicas,
        max_ongoing_requests=limits.max_queue,
        # A CPU per decoding thread: decoding is most of a video's CPU time.
        ray_actor_options={"num_cpus": limits.decode_workers, "num_gpus": ray_options.replica_gpus},
    )
    # The ingress admits what all replicas together take; it parses requests and forwards
    # bytes, so it reserves no CPU that a scorer could use.
    ingress_limits = dataclasses.replace(limits, max_queue=limits.max_queue * ray_options.replicas)
    ingress = serve.deployment(
        serve.ingress()(HekeIngress),
        name=INGRESS,
        num_replicas=1,
        max_ongoing_requests=ingress_limits.max_queue + INGRESS_EXTRA_REQUESTS,
        ray_actor_options={"num_cpus": 0},
    )
    return ingress.bind(
        scorers.bind(settings), settings, options, ingress_limits, ray_options.replicas
    )


def deploy(
    settings: ScorerSettings, options: ServeOptions, ray_options: RayOptions, host: str, port: int
) -> Any:
    """Starts Serve's HTTP proxy on ``host:port`` (on the head node; a Serve already running
    keeps its own) and the application; returns its handle once every replica is up. Ray
    must be initialised (:func:`connect`)."""
    serve = require_ray_serve()
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    try:
        return serve.run(build_app(settings, options, ray_options), name=APP_NAME, route_prefix="/")
    except Exception as exc:  # a replica that cannot start: Serve's reason, on one line
        raise RayDeployError(f"the Ray Serve application did not start: {exc}") from None


def connect(address: str | None) -> bool:
    """Ray initialised: the cluster at ``address`` (or ``RAY_ADDRESS``) joined, or else a new
    local instance started; True for a new instance, which the caller then shuts down (a
    cluster joined keeps its Ray and its Serve)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, logging_level=logging.WARNING)
    return address is None and not os.environ.get("RAY_ADDRESS")


def drain(handle: Any, drain_s: float) -> int:
    """Asks the ingress to refuse new requests and waits up to ``drain_s`` for those in
    flight and accepted jobs; answers what was left."""
    deadline = time.monotonic() + drain_s
    left = int(handle.drain.remote().result())
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = int(handle.drain.remote().result())
    return left


def stop(started_ray: bool) -> None:
    """Removes the application, and Ray too when this process started it."""
    import ray
    from ray import serve

    serve.delete(APP_NAME)
    if started_ray:
        serve.shutdown()
        ray.shutdown()


def serve_until_stopped(
    settings: ScorerSettings,
    options: ServeOptions,
    ray_options: RayOptions,
    address: tuple[str, int],
    drain_s: float,
    say: Callable[[str], None],
) -> None:
    """``heke-serve --ray``: runs the application until SIGTERM or SIGINT, then drains as the
    single-machine server does (new requests get 503 while those in flight and accepted jobs
    finish, up to ``drain_s``) and removes it."""
    host, port = address
    started = connect(ray_options.address)
    try:
        port = port or free_port(host)
        handle = deploy(settings, options, ray_options, host, port)
        where = f"[{host}]" if ":" in host else host
        say(
            f"listening on http://{where}:{port} (page /, API docs /docs) with "
            f"{ray_options.replicas} scoring replicas on Ray"
        )
        stopping = _wait_for_signal()
        say(f"{stopping}: finishing work in flight, refusing new requests")
        left = drain(handle, drain_s)
        if left:
            say(f"gave up waiting for {left} requests or jobs")
    finally:
        stop(started)


def _wait_for_signal() -> str:
    """The name of the first SIGTERM or SIGINT to come."""
    got: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda number, frame: got.append(number))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        while not got:
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return signal.Signals(got[0]).name


def free_port(host: str) -> int:
    """A port free on ``host`` now (Serve's proxy takes no port 0)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
