"""heke_runtime: the lean runtime (NumPy, PyAV, ONNX Runtime; no torch)."""

from heke_runtime.backends import BACKENDS, open_backend
from heke_runtime.errors import CheckpointError, HekeError, UnknownModelError, VideoDecodeError
from heke_runtime.regressor import Regressor, load_regressor, save_regressor
from heke_runtime.results import SnippetScore, VideoResult
from heke_runtime.scorer import Scorer
from heke_runtime.spec import PreprocessSpec, default_spec

__all__ = [
    "BACKENDS",
    "CheckpointError",
    "HekeError",
    "PreprocessSpec",
    "Regressor",
    "Scorer",
    "SnippetScore",
    "UnknownModelError",
    "VideoDecodeError",
    "VideoResult",
    "default_spec",
    "load_regressor",
    "open_backend",
    "save_regressor",
]
