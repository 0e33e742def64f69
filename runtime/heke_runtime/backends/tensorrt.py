"""TensorRT backend for ``.plan``/``.engine`` files (name-based I/O, TensorRT 10.x and 11.x).

``tensorrt`` and ``cuda.bindings`` (cuda-python) are imported inside ``__enter__`` only, so this
module imports on any machine. Loading refuses, with the reason, a plan whose sidecar records
another TensorRT version, GPU name or compute capability: plans are not portable across them
(unless built version-compatible, which the sidecar says).

Runner
    Two *slots* (double buffering), each with pinned host and device buffers for every I/O
    tensor and three events. Three non-blocking streams: uploads, compute, downloads. While
    batch ``k`` computes, batch ``k+1`` is copied in and batch ``k-1`` copied out
    (:meth:`TensorRTBackend.infer_many`); ``infer`` is the one-batch case. A slot's buffers
    are reused once its last download finished, grown (never shrunk) to the largest shape in
    use, and freed on exit. Each batch runs on the optimisation profile whose range holds
    its shape (the one with the nearest ``opt`` when several do); a batch larger than the
    profile's maximum is split and its outputs joined.

TensorRT 10 and 11 have the same runtime API for this (name-based I/O, ``execute_async_v3``);
the major version decides which majors load at all and whether a version-compatible plan
from an older major may run (it embeds host code, allowed only with ``trust_host_code``).
Every TensorRT and CUDA name used here is listed in :data:`TRT_NAMES` and
:data:`CUDART_NAMES`; a test checks them against the real TensorRT 11 bindings.
"""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from heke_runtime.backends.base import (
    BackendError,
    BackendUnavailableError,
    BaseBackend,
    check_inputs,
    check_outputs,
)
from heke_runtime.sidecar import SidecarError

TRT_EXTRA = "pip install 'heke[trt]'"
SUPPORTED_MAJORS = (10, 11)
SLOTS = 2  # double buffering: one batch computing while the next uploads

# Everything this module touches on the tensorrt module and its objects (Class.member).
TRT_NAMES: tuple[str, ...] = (
    "__version__",
    "Logger",
    "Logger.WARNING",
    "Runtime",
    "Runtime.deserialize_cuda_engine",
    "Runtime.engine_host_code_allowed",
    "TensorIOMode.INPUT",
    "nptype",
    "ICudaEngine.num_io_tensors",
    "ICudaEngine.get_tensor_name",
    "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_dtype",
    "ICudaEngine.num_optimization_profiles",
    "ICudaEngine.get_tensor_profile_shape",
    "ICudaEngine.create_execution_context",
    "IExecutionContext.set_optimization_profile_async",
    "IExecutionContext.set_input_shape",
    "IExecutionContext.infer_shapes",
    "IExecutionContext.get_tensor_shape",
    "IExecutionContext.set_tensor_address",
    "IExecutionContext.execute_async_v3",
)
# Everything used from cuda.bindings.runtime.
CUDART_NAMES: tuple[str, ...] = (
    "cudaError_t.cudaSuccess",
    "cudaGetErrorName",
    "cudaSetDevice",
    "cudaGetDeviceProperties",
    "cudaDeviceProp.name",
    "cudaDeviceProp.major",
    "cudaDeviceProp.minor",
    "cudaMalloc",
    "cudaFree",
    "cudaMallocHost",
    "cudaFreeHost",
    "cudaMemcpyAsync",
    "cudaMemcpyKind.cudaMemcpyHostToDevice",
    "cudaMemcpyKind.cudaMemcpyDeviceToHost",
    "cudaStreamCreateWithFlags",
    "cudaStreamNonBlocking",
    "cudaStreamWaitEvent",
    "cudaStreamSynchronize",
    "cudaStreamDestroy",
    "cudaEventCreateWithFlags",
    "cudaEventDisableTiming",
    "cudaEventRecord",
    "cudaEventSynchronize",
    "cudaEventDestroy",
)

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"


def _import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the TensorRT backend needs the tensorrt package ({exc}); install the extra: "
            f"{TRT_EXTRA}"
        ) from None
    return tensorrt


def _import_cudart() -> ModuleType:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the TensorRT backend needs cuda-python's cuda.bindings ({exc}); install the "
            f"extra: {TRT_EXTRA}"
        ) from None
    return cudart


# --------------------------------------------------------------------------- compatibility


def _field(info: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in info and info[name] not in (None, ""):
            return info[name]
    return None


def _capability(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ".".join(str(v) for v in value)
    return str(value)


def compatibility_problems(info: Mapping[str, Any], *, trt_version: str, gpu: GpuInfo) -> list[str]:
    """Why a plan described by the sidecar's ``tensorrt`` block cannot run here (empty: it can)."""
    problems = []
    built = _field(info, "version", "tensorrt_version", "trt_version")
    compatible = bool(_field(info, "version_compatible"))
    if _major(trt_version) not in SUPPORTED_MAJORS:
        problems.append(f"TensorRT {trt_version} is installed; heke runs TensorRT 10.x and 11.x")
    if built is None:
        problems.append("the sidecar does not record the TensorRT version it was built with")
    elif not _version_ok(str(built), trt_version, compatible):
        problems.append(f"built with TensorRT {built}, this machine has {trt_version}")
    name = _field(info, "gpu_name", "gpu", "device_name")
    if name is not None and str(name) != gpu.name:
        problems.append(f"built for GPU {name!r}, this GPU is {gpu.name!r}")
    capability = _field(info, "compute_capability", "gpu_compute_capability", "sm")
    if capability is None:
        problems.append("the sidecar does not record the GPU compute capability")
    elif _capability(capability) != gpu.compute_capability:
        problems.append(
            f"built for compute capability {_capability(capability)}, this GPU has "
            f"{gpu.compute_capability}"
        )
    return problems


def _version_ok(built: str, installed: str, version_compatible: bool) -> bool:
    if built == installed:
        return True
    if not version_compatible:
        return False
    # Version-compatible plans run on the same or a later major (10.x plans on 11.x).
    return _major(installed) >= _major(built)


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return -1


# --------------------------------------------------------------------------- profiles


def choose_profile(profiles: Sequence[Profile], shapes: Mapping[str, Shape]) -> int:
    """Index of the profile whose [min, max] holds ``shapes`` (batch may exceed max: it is
    split); among several, the one whose ``opt`` is nearest. Raises naming the ranges."""
    fitting = [i for i, p in enumerate(profiles) if _fits(p, shapes)]
    if not fitting:
        ranges = "; ".join(_describe(p) for p in profiles) or "none"
        given = ", ".join(f"{n}={list(s)}" for n, s in shapes.items())
        raise BackendError(f"no optimisation profile of this engine takes {given} ({ranges})")
    return min(fitting, key=lambda i: _distance(profiles[i], shapes))


def _fits(profile: Profile, shapes: Mapping[str, Shape]) -> bool:
    for name, shape in shapes.items():
        low, _, high = profile[name]
        if len(shape) != len(low) or shape[0] < low[0]:
            return False
        if any(not lo <= s <= hi for s, lo, hi in zip(shape[1:], low[1:], high[1:])):
            return False
    return True


def _distance(profile: Profile, shapes: Mapping[str, Shape]) -> int:
    return sum(abs(s - o) for n, shape in shapes.items() for s, o in zip(shape, profile[n][1]))


def _describe(profile: Profile) -> str:
    return ", ".join(f"{n} {list(lo)}..{list(hi)}" for n, (lo, _, hi) in profile.items())


def max_batch(profile: Profile) -> int:
    return min(high[0] for _, _, high in profile.values())


def split_batch(inputs: Mapping[str, np.ndarray], limit: int) -> list[dict[str, np.ndarray]]:
    """``inputs`` cut along axis 0 into pieces of at most ``limit`` rows."""
    count = next(iter(inputs.values())).shape[0]
    return [{k: v[i : i + limit] for k, v in inputs.items()} for i in range(0, count, limit)]


# --------------------------------------------------------------------------- CUDA plumbing


class Cuda:
    """The cuda.bindings runtime calls the runner uses, each checked (errors raise)."""

    def __init__(self, cudart: ModuleType) -> None:
        self.rt = cudart

    def call(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            name = self.rt.cudaGetErrorName(err)[1]
            raise BackendError(
                f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}"
            )
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else tuple(rest)

    def gpu(self, device_id: int) -> GpuInfo:
        rt = self.rt
        self.call(rt.cudaSetDevice(device_id))
        props = self.call(rt.cudaGetDeviceProperties(device_id))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(name.rstrip("\x00").strip(), f"{props.major}.{props.minor}")

    def stream(self) -> Any:
        rt = self.rt
        return self.call(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))

    def event(self) -> Any:
        rt = self.rt
        return self.call(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming))

    def upload(self, device: int, host: int, nbytes: int, stream: Any) -> None:
        rt = self.rt
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(rt.cudaMemcpyAsync(device, host, nbytes, kind, stream))

    def download(self, host: int, device: int, nbytes: int, stream: Any) -> None:
        rt = self.rt
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(rt.cudaMemcpyAsync(host, device, nbytes, kind, stream))

    def after(self, stream: Any, event: Any) -> None:
        """Work queued on ``stream`` from now on waits for ``event``."""
        self.call(self.rt.cudaStreamWaitEvent(stream, event, 0))


def stream_handle(stream: Any) -> int:
    """The integer handle ``execute_async_v3`` takes (cuda-bindings 13 deprecates ``int()``)."""
    if isinstance(stream, int):
        return stream
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(stream)
    return int(get_cuda_native_handle(stream))


@dataclass
class Buffer:
    """A device allocation and its pinned host twin, grown (never shrunk) on demand."""

    device: int = 0
    host: int = 0
    nbytes: int = 0

    def reserve(self, cuda: Cuda, nbytes: int) -> None:
        if nbytes <= self.nbytes:
            return
        self.free(cuda)
        rt = cuda.rt
        self.device = int(cuda.call(rt.cudaMalloc(nbytes)))
        self.host = int(cuda.call(rt.cudaMallocHost(nbytes)))
        self.nbytes = nbytes

    def host_view(self, nbytes: int) -> np.ndarray:
        """The first ``nbytes`` of the pinned buffer as a writable uint8 array (no copy)."""
        pointer = ctypes.cast(self.host, ctypes.POINTER(ctypes.c_ubyte))
        return np.ctypeslib.as_array(pointer, (nbytes,))

    def free(self, cuda: Cuda) -> None:
        rt = cuda.rt
        if self.device:
            cuda.call(rt.cudaFree(self.device))
        if self.host:
            cuda.call(rt.cudaFreeHost(self.host))
        self.device = self.host = self.nbytes = 0


@dataclass
class Slot:
    """One batch in flight: buffers per tensor and the events that order its three stages."""

    uploaded: Any
    computed: Any
    downloaded: Any
    buffers: dict[str, Buffer] = field(default_factory=dict)

    def buffer(self, cuda: Cuda, name: str, nbytes: int) -> Buffer:
        buffer = self.buffers.setdefault(name, Buffer())
        buffer.reserve(cuda, nbytes)
        return buffer


@dataclass
class Job:
    """A submitted batch: where its outputs will land, and whether it ends a caller's batch."""

    slot: Slot
    outputs: dict[str, tuple[Shape, np.dtype]]
    last: bool


class TensorRTBackend(BaseBackend):
    """Runs a serialized TensorRT engine. Outputs are fresh host arrays on every call
    (copied out of the reused pinned buffers).

    ``trust_host_code``: allow a version-compatible plan (one built with an older TensorRT)
    to run the host code it embeds; only for plans you trust.
    """

    name = "tensorrt"
    kind = "tensorrt"

    def __init__(
        self, artifact: str | Path, *, device_id: int = 0, trust_host_code: bool = False
    ) -> None:
        super().__init__(artifact)
        if not self.sidecar.tensorrt:
            raise SidecarError(f"{self.artifact}: the sidecar has no 'tensorrt' build record")
        self.device_id = device_id
        self.trust_host_code = trust_host_code
        self._trt: Any = None
        self._cuda: Cuda | None = None
        self._engine: Any = None
        self._context: Any = None
        self._streams: tuple[Any, Any, Any] | None = None  # upload, compute, download
        self._slots: list[Slot] = []
        self._next = 0
        self._profiles: list[Profile] = []
        self._active_profile = 0
        self._gpu: GpuInfo | None = None

    @property
    def device(self) -> str:
        if self._gpu is None:
            return "TensorRT (not loaded)"
        gpu = self._gpu
        return f"TensorRT {self._trt.__version__} on {gpu.name} (cc {gpu.compute_capability})"

    # ------------------------------------------------------------------ load / release

    def _load(self) -> None:
        trt = _import_tensorrt()
        cuda = Cuda(_import_cudart())
        gpu = cuda.gpu(self.device_id)
        info = self.sidecar.tensorrt or {}
        problems = compatibility_problems(info, trt_version=trt.__version__, gpu=gpu)
        if problems:
            raise SidecarError(f"{self.artifact}: cannot run here: {'; '.join(problems)}")
        engine = self._deserialize(trt, info)
        self._check_io(trt, engine)
        self._trt, self._cuda, self._gpu, self._engine = trt, cuda, gpu, engine
        self._profiles = self._read_profiles(engine)
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"{self.artifact}: TensorRT could not create an execution context")
        self._active_profile = 0
        self._streams = (cuda.stream(), cuda.stream(), cuda.stream())
        self._slots = [Slot(cuda.event(), cuda.event(), cuda.event()) for _ in range(SLOTS)]

    def _deserialize(self, trt: ModuleType, info: Mapping[str, Any]) -> Any:
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        built = str(_field(info, "version", "tensorrt_version", "trt_version"))
        if _major(built) != _major(trt.__version__):
            # A version-compatible plan from an older major embeds its own lean runtime.
            if not self.trust_host_code:
                raise SidecarError(
                    f"{self.artifact}: a version-compatible plan from TensorRT {built} runs "
                    f"host code it embeds; pass trust_host_code=True if you trust this file"
                )
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(self.artifact.read_bytes())
        if engine is None:
            raise BackendError(f"{self.artifact}: TensorRT could not deserialize the plan")
        return engine

    def _check_io(self, trt: ModuleType, engine: Any) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = sorted(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        outputs = {n for n in names if n not in inputs}
        if inputs != sorted(self.sidecar.inputs) or not set(self.sidecar.outputs) <= outputs:
            raise SidecarError(
                f"{self.artifact}: engine tensors {sorted(names)} differ from the sidecar's "
                f"inputs {sorted(self.sidecar.inputs)} and outputs {sorted(self.sidecar.outputs)}"
            )

    def _read_profiles(self, engine: Any) -> list[Profile]:
        """The (min, opt, max) shape of every input under every optimisation profile."""
        profiles = []
        for index in range(engine.num_optimization_profiles):
            profile: Profile = {}
            for name in self.sidecar.inputs:
                low, opt, high = engine.get_tensor_profile_shape(name, index)
                profile[name] = (tuple(low), tuple(opt), tuple(high))
            profiles.append(profile)
        return profiles

    def _release(self) -> None:
        cuda = self._cuda
        if cuda is not None:
            rt = cuda.rt
            if self._streams is not None:
                for stream in self._streams:
                    cuda.call(rt.cudaStreamSynchronize(stream))
            for slot in self._slots:
                for buffer in slot.buffers.values():
                    buffer.free(cuda)
                for event in (slot.uploaded, slot.computed, slot.downloaded):
                    cuda.call(rt.cudaEventDestroy(event))
            for stream in self._streams or ():
                cuda.call(rt.cudaStreamDestroy(stream))
        self._slots, self._streams = [], None
        self._context = self._engine = None
        self._gpu = None

    # ------------------------------------------------------------------ running

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return next(self._pipelined([inputs]))

    def infer_many(
        self, batches: Iterable[Mapping[str, np.ndarray]]
    ) -> Iterator[dict[str, np.ndarray]]:
        """Outputs of each batch, in order, with the copies of neighbouring batches overlapped.

        Each batch is checked like ``infer``. At most :data:`SLOTS` batches are in flight, so
        the next batch is drawn from ``batches`` while the current one computes.
        """
        if not self._loaded:
            raise BackendError(f"{self.name}: use the backend in a 'with' block before infer()")
        for outputs in self._pipelined(self._checked(batches)):
            check_outputs(outputs, self.sidecar.outputs)
            yield outputs

    def _checked(
        self, batches: Iterable[Mapping[str, np.ndarray]]
    ) -> Iterator[Mapping[str, np.ndarray]]:
        for batch in batches:
            check_inputs(batch, self.sidecar.inputs)
            yield batch

    def _pipelined(
        self, batches: Iterable[Mapping[str, np.ndarray]]
    ) -> Iterator[dict[str, np.ndarray]]:
        cuda = self._require_cuda()
        # The CUDA device is per host thread; the pipeline calls from its own thread.
        cuda.call(cuda.rt.cudaSetDevice(self.device_id))
        in_flight: deque[Job] = deque()
        parts: list[dict[str, np.ndarray]] = []
        for batch in batches:
            profile = choose_profile(self._profiles, {k: v.shape for k, v in batch.items()})
            pieces = split_batch(batch, max_batch(self._profiles[profile]))
            for number, piece in enumerate(pieces):
                if len(in_flight) == SLOTS:
                    yield from self._retire(in_flight.popleft(), parts)
                in_flight.append(self._submit(piece, profile, number == len(pieces) - 1))
        while in_flight:
            yield from self._retire(in_flight.popleft(), parts)

    def _require_cuda(self) -> Cuda:
        if self._cuda is None or self._streams is None:
            raise BackendError(f"{self.name}: not loaded")
        return self._cuda

    def _submit(self, inputs: Mapping[str, np.ndarray], profile: int, last: bool) -> Job:
        """Queue upload, compute and download of one batch on the next free slot."""
        cuda = self._require_cuda()
        assert self._streams is not None
        upload, compute, download = self._streams
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        # The slot's previous batch must be out of its buffers before they are rewritten.
        cuda.call(cuda.rt.cudaEventSynchronize(slot.downloaded))
        context = self._context
        if profile != self._active_profile:
            context.set_optimization_profile_async(profile, stream_handle(compute))
            self._active_profile = profile
        for name, array in inputs.items():
            host = np.ascontiguousarray(array, dtype=np.float32)
            context.set_input_shape(name, host.shape)
            buffer = slot.buffer(cuda, name, host.nbytes)
            buffer.host_view(host.nbytes)[:] = host.reshape(-1).view(np.uint8)
            cuda.upload(buffer.device, buffer.host, host.nbytes, upload)
            context.set_tensor_address(name, buffer.device)
        cuda.call(cuda.rt.cudaEventRecord(slot.uploaded, upload))
        outputs = self._bind_outputs(slot)
        cuda.after(compute, slot.uploaded)
        if not context.execute_async_v3(stream_handle(compute)):
            raise BackendError("TensorRT execution failed (see the TensorRT log above)")
        cuda.call(cuda.rt.cudaEventRecord(slot.computed, compute))
        cuda.after(download, slot.computed)
        for name, (shape, dtype) in outputs.items():
            buffer = slot.buffers[name]
            cuda.download(buffer.host, buffer.device, _nbytes(shape, dtype), download)
        cuda.call(cuda.rt.cudaEventRecord(slot.downloaded, download))
        return Job(slot, outputs, last)

    def _bind_outputs(self, slot: Slot) -> dict[str, tuple[Shape, np.dtype]]:
        """Output shapes at the current input shapes; buffers reserved and bound."""
        cuda, context, engine = self._require_cuda(), self._context, self._engine
        unresolved = context.infer_shapes()
        if unresolved:
            raise BackendError(f"TensorRT could not infer the shapes of {unresolved}")
        outputs = {}
        for name in self.sidecar.outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            dtype = np.dtype(self._trt.nptype(engine.get_tensor_dtype(name)))
            buffer = slot.buffer(cuda, name, _nbytes(shape, dtype))
            context.set_tensor_address(name, buffer.device)
            outputs[name] = (shape, dtype)
        return outputs

    def _retire(
        self, job: Job, parts: list[dict[str, np.ndarray]]
    ) -> Iterator[dict[str, np.ndarray]]:
        """Wait for ``job``'s download; yield the caller's batch once its last piece is in."""
        cuda = self._require_cuda()
        cuda.call(cuda.rt.cudaEventSynchronize(job.slot.downloaded))
        result = {}
        for name, (shape, dtype) in job.outputs.items():
            raw = job.slot.buffers[name].host_view(_nbytes(shape, dtype))
            result[name] = raw.view(dtype).reshape(shape).astype(np.float32)  # a copy
        parts.append(result)
        if job.last:
            joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            parts.clear()
            yield joined


def _nbytes(shape: Shape, dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
