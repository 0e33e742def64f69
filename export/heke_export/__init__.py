"""heke_export: torch -> ONNX (FP32, FP16 mixed) -> TensorRT plan, with parity checks.

Public API (imported lazily, so ``heke_export.trt_check`` does not pull in torch):

- :func:`onnx_from_weights` / :func:`onnx_model_from_weights` -- checked ONNX graph + sidecar
- :func:`plan_from_onnx` with :class:`BuildOptions`, :class:`Profile`, :func:`default_profile`
- :func:`check_tensorrt_compat` -- static TensorRT-parser compatibility check, no TensorRT
- :func:`verify_onnx` -- parity report against ``heke_ref``
- :func:`artifacts_from_weights` with :class:`ExportOptions` -- what ``heke-export`` runs
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "onnx_from_weights": "heke_export.onnx_export",
    "onnx_model_from_weights": "heke_export.onnx_export",
    "plan_from_onnx": "heke_export.trt_build",
    "BuildOptions": "heke_export.trt_build",
    "Profile": "heke_export.trt_build",
    "default_profile": "heke_export.trt_build",
    "check_tensorrt_compat": "heke_export.trt_check",
    "verify_onnx": "heke_export.verify",
    "artifacts_from_weights": "heke_export.pipeline",
    "ExportOptions": "heke_export.pipeline",
    "weights_for": "heke_export.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'heke_export' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
