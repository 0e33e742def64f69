"""Backends by name, and the choice of one from an engine file's suffix.

``BACKENDS`` is a plain dict ``name -> factory(artifact, **options)``; each factory returns a
:class:`Backend` context manager. No framework is imported until a backend is entered, except
the torch backend, which loads its weights (torch) when it is built.

Engines: ``.onnx`` (ONNX Runtime), ``.plan``/``.engine`` (TensorRT), and for the torch backend
an authors' checkpoint (``.pkl``/``.pt``/``.pth``) or ``demo:<model>`` (demo weights).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from heke_runtime.backends.base import (
    Backend,
    BackendError,
    BackendUnavailableError,
    BaseBackend,
    InferenceInputError,
    check_inputs,
)
from heke_runtime.backends.onnxruntime import OnnxRuntimeBackend
from heke_runtime.backends.tensorrt import TensorRTBackend
from heke_runtime.backends.torch import TorchBackend, is_torch_engine

BackendFactory = Callable[..., BaseBackend]

BACKENDS: dict[str, BackendFactory] = {
    "onnxruntime": partial(OnnxRuntimeBackend, provider="auto"),
    "onnxruntime-cpu": partial(OnnxRuntimeBackend, provider="cpu"),
    "onnxruntime-cuda": partial(OnnxRuntimeBackend, provider="cuda"),
    "onnxruntime-tensorrt": partial(OnnxRuntimeBackend, provider="tensorrt"),
    "tensorrt": TensorRTBackend,
    "torch": partial(TorchBackend, device="auto"),
    "torch-cpu": partial(TorchBackend, device="cpu"),
    "torch-cuda": partial(TorchBackend, device="cuda"),
}

BY_SUFFIX: dict[str, str] = {
    ".onnx": "onnxruntime",
    ".plan": "tensorrt",
    ".engine": "tensorrt",
    ".pkl": "torch",
    ".pt": "torch",
    ".pth": "torch",
}


def backend_name_for(artifact: str | Path, backend: str | None = None) -> str:
    """``backend`` when given (checked), else the one the file suffix implies."""
    if backend is not None:
        if backend not in BACKENDS:
            raise BackendError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        return backend
    if is_torch_engine(artifact):
        return "torch"  # demo:<model> has no suffix
    suffix = Path(artifact).suffix.lower()
    if suffix not in BY_SUFFIX:
        known = ", ".join(BY_SUFFIX)
        raise BackendError(
            f"{artifact}: cannot tell the backend from the suffix {suffix or '(none)'!r} "
            f"(known: {known}, or demo:<model>); pass a backend ({', '.join(BACKENDS)})"
        )
    return BY_SUFFIX[suffix]


def open_backend(artifact: str | Path, backend: str | None = None, **options: Any) -> BaseBackend:
    """An unentered backend for ``artifact`` (its sidecar already checked); use ``with``."""
    return BACKENDS[backend_name_for(artifact, backend)](Path(artifact), **options)


__all__ = [
    "BACKENDS",
    "BY_SUFFIX",
    "Backend",
    "BackendError",
    "BackendUnavailableError",
    "BaseBackend",
    "InferenceInputError",
    "OnnxRuntimeBackend",
    "TensorRTBackend",
    "TorchBackend",
    "backend_name_for",
    "check_inputs",
    "is_torch_engine",
    "open_backend",
]
