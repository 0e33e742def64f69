"""Score videos with an engine: decode, sample, batch snippets through a backend, summarise.

``Scorer(engine)`` gives the blind scores: each of the four heads averaged over the snippets,
and their mean (``ensemble``), on the DMOS-like scale the heads were trained on (about
0.5-10, higher = more distorted). With a regressor it also gives the fine-tuned score
(``regressor``). Per-video errors never raise: they come back as results with
``status == "error"`` and a one-line reason, so a batch always runs to the end.
No torch is imported here or below.
"""

from __future__ import annotations

import dataclasses
import glob
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from heke_runtime.backends import BaseBackend, backend_name_for, open_backend
from heke_runtime.errors import HekeError
from heke_runtime.hdr import DEFAULT_HDR, HDR_CHOICES, HdrMode
from heke_runtime.models import model_entry
from heke_runtime.pipeline import (
    Pipeline,
    PipelineOptions,
    PipelineStats,
    captured_warnings,
    default_workers,
    run_batches_with,
)
from heke_runtime.regressor import Regressor, load_regressor
from heke_runtime.results import (
    REGRESSOR_NAME,
    EngineMeta,
    Sampling,
    SnippetScore,
    VideoMeta,
    VideoResult,
    failed,
    one_line,
    path_key,
)
from heke_runtime.sampling import block_scale, time_step
from heke_runtime.scores import blind_scores, snippet_scores
from heke_runtime.sources import is_stream, is_url, local_copy

if TYPE_CHECKING:  # PyAV loads on first use only (decode_video)
    from heke_runtime.decode import OnDamage, SnippetTimes, VideoInfo

DEFAULT_BATCH_SIZE = 4  # snippets per inference call where the backend has no preference


def default_batch_size(backend: BaseBackend) -> int:
    """The backend's ``preferred_batch_size`` (1 on CPU) or DEFAULT_BATCH_SIZE."""
    return backend.preferred_batch_size or DEFAULT_BATCH_SIZE


class ScorerError(HekeError, ValueError):
    """Bad Scorer options, or an engine output that is not a score (NaN/Inf)."""


class Scorer:
    """Scores videos with one engine (and optionally a regressor).

    Use as a context manager (or call :meth:`close`) to free the backend; ``score`` loads it on
    first use. ``num_snippets`` defaults to the engine's preprocessing spec (12 snippets for
    r2p1d, the authors' setting for raw/synthetic datasets; 10 is theirs for in-the-wild
    files; 20 frame pairs for resnet). ``size=(W, H)`` is needed for raw ``.yuv`` files.
    ``keep_arrays`` keeps the raw per-snippet ``heads`` and ``features`` on each result.

    ``score_many`` runs the pipeline (:mod:`heke_runtime.pipeline`): ``workers`` decoding
    threads (default: the machine's cores; 0 decodes in the calling thread, one video after
    another) feed batches of up to ``batch_size`` snippets, grouped across videos, to the
    backend (default: the backend's choice, :func:`default_batch_size`: 1 on CPU, where
    larger batches only cost memory; 4 on GPUs). Results are the same either
    way and come in input order. ``timeout`` (seconds, default none) gives up on a video whose
    decoding runs longer: it comes back as an error result and the others go on (see
    :mod:`heke_runtime.pipeline`); with ``workers=0`` there is no timeout, since decoding
    then runs in the calling thread, which nothing could take back from a hung file.
    ``backend_options`` go to the backend (e.g. ``{"precision": "fp32"}`` for the torch
    backend). ``on_damage``: ``"fail"`` (default) makes a damaged video an error result,
    ``"conceal"`` scores what FFmpeg's error concealment decodes and puts a
    ``concealed damage: ...`` line in the result's ``warnings`` (:mod:`heke_runtime.decode`).
    ``hdr``: how a PQ/HLG video is read, ``"tonemap"`` (default, to SDR BT.709 by
    :mod:`heke_runtime.hdr`'s curve) or ``"as-is"``; either way its result carries
    ``video.transfer``/``primaries``/``hdr`` and an ``HDR video (...)`` warning.
    ``stream_seconds`` reads at most that much of a stream read through FFmpeg (RTMP, RTSP,
    TCP, HLS: :mod:`heke_runtime.sources`), so a live stream that never ends is scored on its
    first seconds; files, downloads and standard input are read whole.
    """

    def __init__(
        self,
        engine: str | Path,
        regressor: str | Path | Regressor | None = None,
        *,
        num_snippets: int | None = None,
        batch_size: int | None = None,
        backend: str | None = None,
        size: tuple[int, int] | None = None,
        threads: int | None = None,
        device_id: int = 0,
        keep_arrays: bool = False,
        workers: int | None = None,
        timeout: float | None = None,
        backend_options: Mapping[str, Any] | None = None,
        on_damage: OnDamage = "fail",
        hdr: HdrMode = DEFAULT_HDR,
        stream_seconds: float | None = None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ScorerError(f"batch_size must be at least 1, got {batch_size}")
        if workers is not None and workers < 0:
            raise ScorerError(f"workers must be 0 (no pipeline) or more, got {workers}")
        if timeout is not None and not timeout > 0:
            raise ScorerError(f"timeout must be more than 0 seconds (or None), got {timeout}")
        if stream_seconds is not None and not stream_seconds > 0:
            raise ScorerError(f"stream_seconds must be more than 0 (or None), got {stream_seconds}")
        if num_snippets is not None and num_snippets < 2:
            raise ScorerError(f"num_snippets must be at least 2, got {num_snippets}")
        if on_damage not in ("fail", "conceal"):
            raise ScorerError(f"on_damage must be 'fail' or 'conceal', got {on_damage!r}")
        if hdr not in HDR_CHOICES:
            raise ScorerError(f"hdr must be 'tonemap' or 'as-is', got {hdr!r}")
        self.engine_path = Path(engine)
        self.backend_name = backend_name_for(self.engine_path, backend)
        options: dict[str, Any] = {"device_id": device_id, **(backend_options or {})}
        if self.backend_name.startswith(("onnxruntime", "torch")) and threads is not None:
            options["threads"] = threads
        self.backend: BaseBackend = open_backend(self.engine_path, self.backend_name, **options)
        self.sidecar = self.backend.sidecar
        self.model = self.sidecar.model
        self.num_snippets = num_snippets or self.sidecar.preprocess.num_snippets
        self.batch_size = batch_size or default_batch_size(self.backend)
        self.size = size
        self.keep_arrays = keep_arrays
        self.workers = default_workers() if workers is None else workers
        self.timeout = timeout
        self.on_damage: OnDamage = on_damage
        self.hdr: HdrMode = hdr
        self.stream_seconds = stream_seconds
        self.regressor = self._load_regressor(regressor)
        self.last_stats: PipelineStats | None = None  # of the last pipelined score_many
        self._open = False

    def _load_regressor(self, regressor: str | Path | Regressor | None) -> Regressor | None:
        if regressor is None:
            return None
        loaded = regressor if isinstance(regressor, Regressor) else load_regressor(regressor)
        width = self.sidecar.outputs.get("features", [None])[-1]
        if isinstance(width, int):
            loaded.check_engine(self.model, width, self.sidecar.weights_sha256)
        elif loaded.layout.model != self.model:
            loaded.check_engine(self.model, loaded.layout.feature_dim)
        return loaded

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Scorer:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Load the engine (done by ``score`` on first use)."""
        if not self._open:
            self.backend.__enter__()
            self._open = True

    def close(self) -> None:
        if self._open:
            self.backend.__exit__(None, None, None)
            self._open = False

    @property
    def device(self) -> str:
        return self.backend.device

    # ------------------------------------------------------------------ scoring

    def score(self, path: str | Path) -> VideoResult:
        """Score one video; failures come back as ``status="error"`` results."""
        start = time.perf_counter()
        try:
            self.open()
            decoded = self.decode(path)
            return self.result(decoded, self.infer(decoded.inputs), start)
        except Exception as exc:  # one bad file must not stop a batch
            return self.failure(path, exc, start)

    def score_many(self, paths: Iterable[str | Path]) -> Generator[VideoResult, None, None]:
        """Score each path, yielding results in input order as soon as each is ready.

        With ``workers > 0`` decoding, batching and inference overlap (module
        :mod:`heke_runtime.pipeline`); ``last_stats`` then tells what the run did.
        """
        if self.workers == 0:
            yield from (self.score(path) for path in paths)
            return
        try:
            self.open()
        except Exception:  # every video reports why the engine cannot run, as score() does
            yield from (self.score(path) for path in paths)
            return
        options = PipelineOptions(
            workers=self.workers, batch_size=self.batch_size, timeout_s=self.timeout
        )
        pipeline: Pipeline[DecodedVideo, VideoResult] = Pipeline(
            self.decode, run_batches_with(self.backend), self.result, self.failure, options
        )
        self.last_stats = pipeline.stats
        yield from pipeline.run(paths)

    # The steps of ``score``, public so that other drivers (the Ray corpus actor, the
    # benchmarks) give the same records: decode -> infer -> result, or failure.

    def decode(
        self, path: str | Path, num_snippets: int | None = None, name: str | None = None
    ) -> DecodedVideo:
        """Probe, sample, decode and preprocess one video (thread-safe); ``num_snippets``
        overrides the Scorer's for this video (heke-serve's ``?snippets=``), and ``name`` is
        what its result and warnings call it (default: ``path`` as given)."""
        return decode_video(
            path,
            self.model,
            num_snippets or self.num_snippets,
            self.size,
            on_damage=self.on_damage,
            stall_s=self.timeout,
            stream_s=self.stream_seconds,
            deadline_s=self.timeout,
            hdr=self.hdr,
            name=name,
        )

    def failure(self, path: str | Path, exc: BaseException, start: float) -> VideoResult:
        """The error result of a video whose scoring raised ``exc``."""
        elapsed = time.perf_counter() - start
        result = failed(path, error_reason(exc, path), elapsed_s=elapsed)
        return dataclasses.replace(result, engine=self._engine_meta())

    def result(
        self, decoded: DecodedVideo, outputs: Mapping[str, np.ndarray], start: float
    ) -> VideoResult:
        """The result of one video from its snippets' engine outputs (and what decoding
        learned about it: no file is opened again here)."""
        heads, features = outputs["heads"], outputs["features"]
        if not (np.isfinite(heads).all() and np.isfinite(features).all()):
            # Never report garbage as a score (an FP16 overflow shows up this way).
            raise ScorerError(f"the engine returned NaN/Inf for this video ({self.device})")
        reg = self.regressor.snippet_scores(features) if self.regressor else None
        per_snippet = snippet_scores(heads)
        scores = {name: float(value) for name, value in blind_scores(heads).items()}
        if reg is not None:
            per_snippet[REGRESSOR_NAME] = reg.astype(np.float64)
            scores[REGRESSOR_NAME] = float(per_snippet[REGRESSOR_NAME].mean())
        return VideoResult(
            path=decoded.path,
            status="ok",
            scores=scores,
            spread={name: _spread(values) for name, values in per_snippet.items()},
            snippets=_snippets(per_snippet, decoded.times),
            video=decoded.video,
            sampling=self._sampling(decoded),
            engine=self._engine_meta(),
            regressor=self._regressor_meta(),
            demo_weights=self.sidecar.demo_weights,
            warnings=decoded.warnings,
            elapsed_s=time.perf_counter() - start,
            heads=heads if self.keep_arrays else None,
            features=features if self.keep_arrays else None,
        )

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All snippets of one video through the backend, ``batch_size`` at a time."""
        return infer_snippets(self.backend, inputs, self.batch_size)

    def _sampling(self, decoded: DecodedVideo) -> Sampling:
        shape = next(iter(decoded.inputs.values())).shape
        return Sampling(
            model=self.model,
            num_snippets=int(decoded.plan.shape[0]),  # the plan's, which decode() chose
            frames_per_snippet=self.sidecar.preprocess.frames_per_snippet,
            time_step=decoded.time_step,
            scale=decoded.scale,
            input_height=int(shape[-2]),
            input_width=int(shape[-1]),
        )

    def _engine_meta(self) -> EngineMeta:
        side = self.sidecar
        return EngineMeta(
            path=str(self.engine_path),
            sha256=side.artifact_sha256,
            kind=side.kind,
            precision=side.precision,
            model=side.model,
            weights_sha256=side.weights_sha256,
            demo_weights=side.demo_weights,
            backend=self.backend_name,
            device=self.backend.device,
        )

    def _regressor_meta(self) -> dict[str, str] | None:
        if self.regressor is None:
            return None
        return {"path": self.regressor.source, "sha256": self.regressor.sha256}


def error_reason(exc: BaseException, path: str | Path | None = None) -> str:
    """A one-line reason: our errors speak for themselves, others get their type.

    A leading ``"<path>: "`` is dropped, since records and messages name the file already.
    """
    text = one_line(str(exc) if isinstance(exc, HekeError) else f"{type(exc).__name__}: {exc}")
    prefix = f"{path}: "
    return text[len(prefix) :] if path is not None and text.startswith(prefix) else text


@dataclass(frozen=True)
class DecodedVideo:
    """One video's model inputs (first axis: snippets) with what decoding learned about it:
    the frame plan, each snippet's frames and times, the video's metadata, the block scale
    and time step used, and the warnings raised (frames travel with their times, so nothing
    re-probes the file after inference)."""

    path: str
    inputs: dict[str, np.ndarray]
    info: VideoInfo
    plan: np.ndarray
    warnings: tuple[str, ...]
    times: SnippetTimes
    video: VideoMeta
    scale: int
    time_step: int


def decode_video(
    path: str | Path,
    model: str,
    num_snippets: int,
    size: tuple[int, int] | None,
    *,
    sums_only: bool = False,
    on_damage: OnDamage = "fail",
    stall_s: float | None = None,
    stream_s: float | None = None,
    deadline_s: float | None = None,
    hdr: HdrMode = DEFAULT_HDR,
    name: str | None = None,
) -> DecodedVideo:
    """One video's model inputs, with the warnings decoding raised as one-line notes.

    ``path`` may be a URL or ``-`` (standard input): such inputs are copied to a temporary
    file first (:mod:`heke_runtime.sources`; ``stall_s`` bounds each network read, default
    :data:`heke_runtime.sources.NETWORK_STALL_S`, ``stream_s`` the seconds read of a
    stream, and ``deadline_s`` the whole copy's time); the result names ``path`` as given,
    or ``name`` (heke-serve: an upload's file name, never its temporary file).

    ``sums_only`` stops at the integer block sums (``inputs == {"sums": ...}``, see
    :func:`heke_runtime.preprocess.load_sums`): what the Ray corpus ships from its decode
    tasks, a half to a quarter of the float32 inputs' bytes.
    """
    from heke_runtime.decode import snippet_times  # PyAV loads on first use only
    from heke_runtime.preprocess import load_clips, load_sums

    source = str(path)
    shown = source if name is None else name
    with (
        captured_warnings() as caught,
        local_copy(source, stall_s=stall_s, stream_s=stream_s, deadline_s=deadline_s) as local,
    ):
        if sums_only:
            sums, info, plan = load_sums(
                local, num_snippets, size=size, model=model, on_damage=on_damage, hdr=hdr
            )
            inputs = {"sums": sums}
        else:
            loaded, info, plan = load_clips(
                local, num_snippets, size=size, model=model, on_damage=on_damage, hdr=hdr
            )
            inputs = named_inputs(model, loaded)
    if local != shown:  # a spooled copy, already deleted, or a file named otherwise
        info = dataclasses.replace(info, path=shown)
    messages = tuple(dict.fromkeys(one_line(m).replace(local, shown) for m in caught))
    plan = np.asarray(plan)
    return DecodedVideo(
        path=shown,
        inputs=inputs,
        info=info,
        plan=plan,
        warnings=messages,
        times=snippet_times(info, plan),
        video=_video_meta(info, hdr),
        scale=block_scale(info.width, info.height),
        time_step=time_step(info.num_frames),
    )


def infer_snippets(
    backend: Any, inputs: Mapping[str, np.ndarray], batch_size: int
) -> dict[str, np.ndarray]:
    """``heads`` and ``features`` of every snippet of ``inputs``, ``batch_size`` at a time."""
    count = next(iter(inputs.values())).shape[0]
    batches = (
        {k: v[first : first + batch_size] for k, v in inputs.items()}
        for first in range(0, count, batch_size)
    )
    outputs = list(run_batches_with(backend)(batches))
    return {name: np.concatenate([o[name] for o in outputs]) for name in ("heads", "features")}


def named_inputs(model: str, loaded: Any) -> dict[str, np.ndarray]:
    """The engine's input names (the model entry's) for what the preprocessing returned:
    one array for a single-input model, a tuple in input order otherwise."""
    names = model_entry(model).inputs
    arrays = loaded if len(names) > 1 else (loaded,)
    return dict(zip(names, arrays))


def _spread(values: np.ndarray) -> float:
    """Sample standard deviation over snippets (0 for a single snippet)."""
    return float(np.std(values, ddof=1)) if values.shape[0] >= 2 else 0.0


def _snippets(
    per_snippet: Mapping[str, np.ndarray], times: SnippetTimes
) -> tuple[SnippetScore, ...]:
    return tuple(
        SnippetScore(
            i,
            float(times.start_s[i]),
            float(times.end_s[i]),
            int(times.first_frame[i]),
            int(times.last_frame[i]),
            {name: float(values[i]) for name, values in per_snippet.items()},
        )
        for i in range(len(times.first_frame))
    )


def _video_meta(info: VideoInfo, hdr: HdrMode) -> VideoMeta:
    return VideoMeta(
        num_frames=int(info.num_frames),
        fps=float(info.fps or 0.0),
        duration_s=float(info.duration_s or 0.0),
        width=int(info.width),
        height=int(info.height),
        codec=str(info.codec or ""),
        pix_fmt=str(info.pix_fmt or ""),
        rotation=int(info.rotation or 0),
        transfer=info.transfer,
        primaries=info.primaries,
        hdr=None if info.transfer == "sdr" else hdr,
    )


# --------------------------------------------------------------------------- inputs

# What a folder or glob contributes: containers FFmpeg reads, and raw yuv420p.
VIDEO_EXTENSIONS = frozenset(
    (
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".wmv",
        ".flv",
        ".mpg",
        ".mpeg",
        ".m2v",
        ".ts",
        ".mts",
        ".m2ts",
        ".3gp",
        ".ogv",
        ".mxf",
        ".y4m",
        ".yuv",
        ".h264",
        ".264",
        ".h265",
        ".265",
        ".hevc",
        ".ivf",
        ".nut",
    )
)
LIST_SUFFIX = ".txt"


@dataclass(frozen=True)
class InputItem:
    """One thing to score: a path, or why an input named nothing scorable."""

    path: str
    error: str | None = None


def expand_inputs(items: Sequence[str]) -> list[InputItem]:
    """Files, folders (recursive, by video extension), globs and path lists, in order, once.

    A list is ``@paths.txt`` or any ``.txt`` file: one path per line, blank lines and ``#``
    comments skipped, relative paths taken from the list's folder. A file named explicitly is
    scored whatever its extension. URLs, ``-`` (standard input) and named pipes are kept as
    given, to be read once and spooled (:mod:`heke_runtime.sources`). Inputs naming nothing
    come back with ``error`` set.
    """
    seen: set[str] = set()
    expanded = []
    for item in items:
        for entry in _expand(item, lists=True):
            key = path_key(entry.path) if entry.error is None else f"?{entry.path}"
            if key not in seen:
                seen.add(key)
                expanded.append(entry)
    return expanded


def _expand(item: str, *, lists: bool) -> list[InputItem]:
    if lists and item.startswith("@"):
        return _from_list(Path(item[1:]), item)
    if is_stream(item):
        return [InputItem(item)]
    path = Path(item)
    if path.is_dir():
        return _from_folder(path, item)
    if path.is_file():
        if lists and path.suffix.lower() == LIST_SUFFIX:
            return _from_list(path, item)
        return [InputItem(item)]
    if glob.has_magic(item):
        matches = sorted(glob.glob(item, recursive=True))
        videos = [m for m in matches if Path(m).is_file() and _is_video(Path(m))]
        if not videos:
            return [InputItem(item, "no video file matches this pattern")]
        return [InputItem(m) for m in videos]
    return [InputItem(item, "no such file or directory")]


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _from_folder(folder: Path, item: str) -> list[InputItem]:
    videos = sorted(p for p in folder.rglob("*") if p.is_file() and _is_video(p))
    if not videos:
        return [InputItem(item, "directory holds no video files (by extension)")]
    return [InputItem(str(p)) for p in videos]


def _from_list(listing: Path, item: str) -> list[InputItem]:
    if not listing.is_file():
        return [InputItem(item, "no such list file")]
    entries = []
    for line in listing.read_text(errors="replace").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if is_url(text):
            entries.append(InputItem(text))
            continue
        target = Path(text).expanduser()
        if not target.is_absolute():
            target = listing.parent / target
        entries += _expand(str(target), lists=False)
    return entries or [InputItem(item, "list file names no paths")]


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "VIDEO_EXTENSIONS",
    "InputItem",
    "Scorer",
    "ScorerError",
    "decode_video",
    "default_batch_size",
    "error_reason",
    "expand_inputs",
    "infer_snippets",
    "named_inputs",
]
