"""heke_runtime: the lean scoring path (NumPy, PyAV, ONNX Runtime; never torch).

Start with :class:`Scorer` (``heke-run`` is a thin layer over it); docs/ARCHITECTURE.md shows
the trip of one video through the modules.
"""

from heke_runtime.errors import HekeError
from heke_runtime.results import VideoResult
from heke_runtime.scorer import Scorer

__all__ = ["HekeError", "Scorer", "VideoResult"]
