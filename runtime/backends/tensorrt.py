"""TensorRT backend for ``.plan``/``.engine`` files (name-based I/O, TensorRT 10.x and 11.x).

``tensorrt`` and ``cuda.bindings`` (cuda-python) are imported inside ``__enter__`` only, so this
module imports on any machine. Loading refuses, with the reason, a plan whose sidecar records
another TensorRT version, GPU name or compute capability: plans are not portable across them
(unless built version-compatible, which the sidecar says).

This is the plain synchronous runner: one stream, device buffers grown to the largest shape
seen and reused, pageable host copies. The pipelined runner (pinned buffers, overlapped
copies) builds on the same interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from heke_runtime.backends.base import BackendError, BackendUnavailableError, BaseBackend
from heke_runtime.sidecar import SidecarError

TRT_EXTRA = "pip install 'heke[trt]'"


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


class _Cuda:
    """The few cuda.bindings runtime calls the runner uses, with errors raised."""

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
        self.call(self.rt.cudaSetDevice(device_id))
        props = self.call(self.rt.cudaGetDeviceProperties(device_id))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(name.rstrip("\x00").strip(), f"{props.major}.{props.minor}")


class TensorRTBackend(BaseBackend):
    """Runs a serialized TensorRT engine. Outputs are fresh host arrays on every call."""

    name = "tensorrt"
    kind = "tensorrt"

    def __init__(self, artifact: str | Path, *, device_id: int = 0) -> None:
        super().__init__(artifact)
        if not self.sidecar.tensorrt:
            raise SidecarError(f"{self.artifact}: the sidecar has no 'tensorrt' build record")
        self.device_id = device_id
        self._trt: Any = None
        self._cuda: _Cuda | None = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, tuple[Any, int]] = {}  # name -> (device pointer, bytes)
        self._gpu: GpuInfo | None = None

    @property
    def device(self) -> str:
        if self._gpu is None:
            return "TensorRT (not loaded)"
        gpu = self._gpu
        return f"TensorRT {self._trt.__version__} on {gpu.name} (cc {gpu.compute_capability})"

    def _load(self) -> None:
        trt = _import_tensorrt()
        cuda = _Cuda(_import_cudart())
        gpu = cuda.gpu(self.device_id)
        problems = compatibility_problems(
            self.sidecar.tensorrt or {}, trt_version=trt.__version__, gpu=gpu
        )
        if problems:
            raise SidecarError(f"{self.artifact}: cannot run here: {'; '.join(problems)}")
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(self.artifact.read_bytes())
        if engine is None:
            raise BackendError(f"{self.artifact}: TensorRT could not deserialize the plan")
        self._check_io(trt, engine)
        self._trt, self._cuda, self._gpu = trt, cuda, gpu
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = cuda.call(cuda.rt.cudaStreamCreateWithFlags(cuda.rt.cudaStreamNonBlocking))

    def _check_io(self, trt: ModuleType, engine: Any) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = sorted(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        outputs = {n for n in names if n not in inputs}
        if inputs != sorted(self.sidecar.inputs) or not set(self.sidecar.outputs) <= outputs:
            raise SidecarError(
                f"{self.artifact}: engine tensors {sorted(names)} differ from the sidecar's "
                f"inputs {sorted(self.sidecar.inputs)} and outputs {sorted(self.sidecar.outputs)}"
            )

    def _release(self) -> None:
        cuda = self._cuda
        if cuda is not None:
            for pointer, _ in self._buffers.values():
                cuda.call(cuda.rt.cudaFree(pointer))
            if self._stream is not None:
                cuda.call(cuda.rt.cudaStreamDestroy(self._stream))
        self._buffers.clear()
        self._context = self._engine = self._stream = None
        self._gpu = None

    def _buffer(self, name: str, nbytes: int) -> Any:
        """A device buffer of at least ``nbytes``, grown (never shrunk) and reused."""
        assert self._cuda is not None
        pointer, size = self._buffers.get(name, (None, 0))
        if size < nbytes:
            if pointer is not None:
                self._cuda.call(self._cuda.rt.cudaFree(pointer))
            pointer = self._cuda.call(self._cuda.rt.cudaMalloc(nbytes))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda, context = self._cuda, self._context
        assert cuda is not None
        kinds = cuda.rt.cudaMemcpyKind
        for name, array in inputs.items():
            host = np.ascontiguousarray(array)
            context.set_input_shape(name, host.shape)
            pointer = self._buffer(name, host.nbytes)
            cuda.call(
                cuda.rt.cudaMemcpyAsync(
                    pointer, host.ctypes.data, host.nbytes, kinds.cudaMemcpyHostToDevice,
                    self._stream,
                )
            )  # fmt: skip
            context.set_tensor_address(name, int(pointer))
        unresolved = context.infer_shapes()
        if unresolved:
            raise BackendError(f"TensorRT could not infer the shapes of {unresolved}")
        outputs = {name: self._output(name) for name in self.sidecar.outputs}
        if not context.execute_async_v3(self._stream):
            raise BackendError("TensorRT execution failed (see the TensorRT log above)")
        for name, array in outputs.items():
            pointer = self._buffers[name][0]
            cuda.call(
                cuda.rt.cudaMemcpyAsync(
                    array.ctypes.data, pointer, array.nbytes, kinds.cudaMemcpyDeviceToHost,
                    self._stream,
                )
            )  # fmt: skip
        cuda.call(cuda.rt.cudaStreamSynchronize(self._stream))
        return {name: array.astype(np.float32, copy=False) for name, array in outputs.items()}

    def _output(self, name: str) -> np.ndarray:
        """A host array for output ``name`` at the current input shapes, bound to its buffer."""
        shape = tuple(self._context.get_tensor_shape(name))
        dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
        array = np.empty(shape, dtype=dtype)
        self._context.set_tensor_address(name, int(self._buffer(name, array.nbytes)))
        return array
