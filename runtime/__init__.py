"""heke_runtime: the lean runtime (NumPy, PyAV, ONNX Runtime; no torch)."""

from heke_runtime.errors import CheckpointError, HekeError, UnknownModelError, VideoDecodeError
from heke_runtime.spec import PreprocessSpec, default_spec

__all__ = [
    "CheckpointError",
    "HekeError",
    "PreprocessSpec",
    "UnknownModelError",
    "VideoDecodeError",
    "default_spec",
]
