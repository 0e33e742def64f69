"""ONNX -> TensorRT plan, one code path for TensorRT 10.x and 11.x (trt_notes.md §1.3).

Precision lives in the ONNX graph: the network is strongly typed (10.x: the STRONGLY_TYPED
creation flag; 11.x: always, the flag is deprecated there), no FP16 builder flag is ever set.
Version differences are decided on ``int(trt.__version__.split(".")[0])``, never on
``hasattr``. ``tensorrt`` and ``cuda.bindings`` are imported only inside these functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

from heke_export.errors import EngineBuildError, TensorRTMissingError
from heke_export.onnx_export import prepare_output_folder, write_artifact
from heke_export.qdq_forms import tensorrt_form
from heke_runtime.files import atomic_write_bytes, now_utc
from heke_runtime.sampling import model_input_size
from heke_runtime.sidecar import Sidecar, read_sidecar
from heke_runtime.spec import default_spec

INSTALL_HINT = "pip install 'heke[trt]'"
DEFAULT_WORKSPACE = 4 << 30
# 16:9 frames from 144p to 4K, and 768x432 (LIVE-style datasets -> 216x384 model input).
FRAME_SIZES = (
    (256, 144), (426, 240), (640, 360), (854, 480), (1280, 720),
    (1920, 1080), (2560, 1440), (3840, 2160), (768, 432),
)  # fmt: skip
OPT_FRAME = (1920, 1080)
Range = tuple[int, int, int]


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: (min, opt, max) of batch, model-input height and width."""

    batch: Range
    height: Range
    width: Range

    def __post_init__(self) -> None:
        for name, (low, opt, high) in vars(self).items():
            if not 1 <= low <= opt <= high:
                raise ValueError(
                    f"profile {name} needs 1 <= min <= opt <= max, got {low}:{opt}:{high}"
                )

    def shapes(self, inputs: dict[str, list[int | str]]) -> dict[str, list[list[int]]]:
        """``{input: [min, opt, max]}`` concrete shapes for inputs like ``["B",3,8,"H","W"]``."""
        axis = {"B": self.batch, "H": self.height, "W": self.width}
        return {
            name: [[axis[d][k] if isinstance(d, str) else d for d in dims] for k in range(3)]
            for name, dims in inputs.items()
        }


def default_profile(model_name: str) -> Profile:
    """Covers the model inputs the sampling rule gives for 144p..4K, both orientations.

    Batch 1 up to one video's snippets (12 clips, or 20 frame pairs), tuned for a full batch
    at 1080p landscape. The profile's maximum sizes the activation memory (H and W both at
    their maximum), so a larger batch is left to ``--batch``; the runtime splits batches
    above the maximum anyway.
    """
    frames = [*FRAME_SIZES, *((h, w) for w, h in FRAME_SIZES)]
    sizes = [model_input_size(w, h) for w, h in frames]
    heights, widths = [h for h, _ in sizes], [w for _, w in sizes]
    opt_h, opt_w = model_input_size(*OPT_FRAME)
    snippets = default_spec(model_name).num_snippets
    return Profile(
        (1, snippets, snippets),
        (min(heights), opt_h, max(heights)),
        (min(widths), opt_w, max(widths)),
    )


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError:
        raise TensorRTMissingError(f"TensorRT is not installed; {INSTALL_HINT}") from None
    return tensorrt


def tensorrt_major(trt: ModuleType) -> int:
    return int(trt.__version__.split(".")[0])


def gpu_info() -> dict[str, str]:
    """Name and compute capability of CUDA device 0 (engines are tied to both)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise TensorRTMissingError(f"cuda-python is not installed; {INSTALL_HINT}") from None
    err, props = cudart.cudaGetDeviceProperties(0)
    if err != cudart.cudaError_t.cudaSuccess:
        raise EngineBuildError(f"no usable CUDA device: {cudart.cudaGetErrorName(err)[1]!r}")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    # Same normalisation as the runtime's TensorRT backend, which compares the two.
    name = name.split("\x00")[0].strip()
    return {"name": name, "compute_capability": f"{props.major}.{props.minor}"}


def tensorrt_logger(trt: ModuleType) -> Any:
    """A TensorRT logger that prints warnings and keeps errors for the exception message."""

    class Logger(trt.ILogger):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg)
            if severity <= trt.ILogger.Severity.WARNING:
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return Logger()


def _network_flags(trt: ModuleType, major: int) -> int:
    if major < 10:
        raise EngineBuildError(f"TensorRT {trt.__version__} is too old; heke needs 10.x or 11.x")
    if major == 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0  # 11.x: every network is strongly typed; the flag is deprecated ("always enabled")


@contextlib.contextmanager
def _tensorrt_source(onnx_path: Path, precision: str) -> Iterator[Path]:
    """The file TensorRT parses: the export itself, or for INT8 its TensorRT form (ReLUs
    restored, zero points 0: heke_export.qdq_forms), in a temporary folder."""
    if precision != "int8":
        yield onnx_path
        return
    with tempfile.TemporaryDirectory(prefix="heke-trt-") as folder:
        source = Path(folder) / onnx_path.name
        onnx.save(tensorrt_form(onnx.load(onnx_path)), source)
        yield source


def _parse(trt: ModuleType, network: Any, log: Any, onnx_path: Path, precision: str) -> None:
    parser = trt.OnnxParser(network, log)
    with _tensorrt_source(onnx_path, precision) as source:
        parsed = parser.parse_from_file(str(source))
    if parsed:
        return
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        lines.append(
            f"node {error.node()} {error.node_name()!r} ({error.node_operator()}): "
            f"{error.desc()} [{error.code()}]"
        )
    raise EngineBuildError(
        f"TensorRT cannot parse {onnx_path.name}: " + "; ".join(lines or log.errors)
    )


def _config(
    trt: ModuleType,
    builder: Any,
    shapes: dict[str, list[list[int]]],
    workspace: int,
    version_compatible: bool,
) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    return config


def _use_timing_cache(config: Any, path: Path) -> None:
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    # ignore_mismatch=False: TensorRT refuses a cache made on another device or version.
    if cache is None or not config.set_timing_cache(cache, False):
        warnings.warn(f"timing cache {path} does not fit here; starting a new one", stacklevel=2)
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _check_engine(trt: ModuleType, log: Any, plan: bytes, sidecar: Sidecar) -> None:
    """Deserialize the plan once: a None engine or wrong I/O is an error now, not at run time."""
    engine = trt.Runtime(log).deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("the built plan does not deserialize: " + "; ".join(log.errors[-3:]))
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    expected = [*sidecar.inputs, *sidecar.outputs]
    if sorted(names) != sorted(expected):
        raise EngineBuildError(f"engine I/O {names} != ONNX I/O {expected}")
    wrong = [n for n in names if engine.get_tensor_dtype(n) != trt.DataType.FLOAT]
    if wrong:
        raise EngineBuildError(f"engine I/O {wrong} are not float32 (the graph's I/O must be)")


@dataclass(frozen=True)
class BuildOptions:
    profile: Profile | None = None
    workspace_bytes: int = DEFAULT_WORKSPACE
    timing_cache: Path | None = None
    version_compatible: bool = False


def _build(
    trt: ModuleType,
    onnx_path: Path,
    shapes: dict[str, list[list[int]]],
    options: BuildOptions,
    cache: Path,
    precision: str,
) -> tuple[bytes, Any]:
    log = tensorrt_logger(trt)
    builder = trt.Builder(log)
    network = builder.create_network(_network_flags(trt, tensorrt_major(trt)))
    _parse(trt, network, log, onnx_path, precision)
    config = _config(trt, builder, shapes, options.workspace_bytes, options.version_compatible)
    _use_timing_cache(config, cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(
            f"TensorRT could not build {onnx_path.name}: " + "; ".join(log.errors[-3:])
        )
    atomic_write_bytes(cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan)), log


def _plan_sidecar(
    onnx_sidecar: Sidecar, plan: bytes, shapes: dict[str, list[list[int]]], info: dict[str, Any]
) -> Sidecar:
    profile = {name: dict(zip(("min", "opt", "max"), s)) for name, s in shapes.items()}
    return dataclasses.replace(
        onnx_sidecar,
        kind="tensorrt",
        artifact_sha256=hashlib.sha256(plan).hexdigest(),
        onnx_sha256=onnx_sidecar.artifact_sha256,  # read_sidecar checked it against the file
        profiles=[profile],
        tensorrt=info,
        created=now_utc(),
    )


def plan_from_onnx(
    onnx_path: Path,
    plan_path: Path | None = None,
    options: BuildOptions = BuildOptions(),
    *,
    echo: Callable[[str], None] = print,
) -> Path:
    """Build a TensorRT plan from an exported ONNX graph; write it and its sidecar.

    The timing cache defaults to ``timing-trt<version>-sm<cc>.cache`` beside the plan, so
    rebuilds with the same TensorRT on the same GPU kind reuse it.
    """
    onnx_sidecar = read_sidecar(onnx_path)
    trt = import_tensorrt()
    gpu = gpu_info()
    shapes = (options.profile or default_profile(onnx_sidecar.model)).shapes(onnx_sidecar.inputs)
    plan_path = plan_path or onnx_path.with_suffix(".plan")
    prepare_output_folder(plan_path.parent)
    sm = gpu["compute_capability"].replace(".", "")
    cache = options.timing_cache or plan_path.with_name(f"timing-trt{trt.__version__}-sm{sm}.cache")
    echo(f"building TensorRT {trt.__version__} engine on {gpu['name']} (sm {sm}), profile {shapes}")
    plan, log = _build(trt, onnx_path, shapes, options, cache, onnx_sidecar.precision)
    _check_engine(trt, log, plan, onnx_sidecar)
    info = {
        "version": trt.__version__,
        "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "strongly_typed": True,
        "workspace_bytes": options.workspace_bytes,
        "version_compatible": options.version_compatible,
        "timing_cache": cache.name,
    }
    return write_artifact(plan_path, plan, _plan_sidecar(onnx_sidecar, plan, shapes, info))
