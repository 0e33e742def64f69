"""Errors raised by heke-export; each is a ``HekeError`` and the matching built-in."""

from __future__ import annotations

from heke_runtime.errors import HekeError


class ExportError(HekeError, RuntimeError):
    """Export produced a graph that fails its own checks (a bug, not a user error)."""


class OutputFolderError(HekeError, OSError):
    """The output folder cannot be created or written."""

    def __str__(self) -> str:  # OSError would format (errno, strerror)
        return str(self.args[0]) if self.args else ""


class TensorRTMissingError(HekeError, ImportError):
    """TensorRT (or cuda-python) is not installed; names the extra to install."""


class EngineBuildError(HekeError, RuntimeError):
    """TensorRT could not parse the ONNX graph or build/deserialize the engine."""


class IncompatibleGraphError(HekeError, ValueError):
    """The static TensorRT-compatibility check found problems in a graph."""
