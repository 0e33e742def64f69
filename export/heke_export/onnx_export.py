"""torch -> ONNX for both precisions, checked before anything is written.

Exporter choice: the TorchScript-based exporter (``dynamo=False``) at opset 18. On these
models it gives the same op set as the dynamo exporter (Conv with BN folded, Relu, Reduce*,
the ``torch.std`` subgraph, grouped Conv, Elu), in well under a second for the tiny models,
and needs no ``onnxscript``; its Reduce ``axes`` arrive as ``Constant`` nodes, which we move
into initializers. torch is pinned (2.13) and the graph checks plus parity tests would catch a
changed graph if the exporter ever changes; the switch is then ``dynamo=True``.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import onnx
import torch
from torch import Tensor

from heke_export.errors import ExportError, IncompatibleGraphError, OutputFolderError
from heke_export.trt_check import check_tensorrt_compat
from heke_export.wrappers import fp16_deploy, fp32_deploy
from heke_ref.checkpoint import Weights, load_model
from heke_ref.registry import create_model
from heke_runtime.files import atomic_write_bytes, now_utc
from heke_runtime.models import model_entry
from heke_runtime.sidecar import Sidecar, write_sidecar
from heke_runtime.spec import default_spec

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = (
    "fp32",
    "fp16",
)  # exported from torch; int8 from fp32 (int8.py)
OPSET = 18  # inside the TensorRT 10.0 parser range (9..20) and TensorRT 11's
OUTPUTS = ("heads", "features")
Dims = list[int | str]


def io_spec(model_name: str, *, tiny: bool = False) -> dict[str, Dims]:
    """Input and output dims with symbolic ``B``, ``H``, ``W`` (the engine I/O contract)."""
    entry = model_entry(model_name)
    features = sum(create_model(model_name, tiny=tiny).feature_sizes)  # type: ignore[arg-type]
    return {**entry.input_dims(), **entry.output_dims(int(features))}


def graph_io(model: onnx.ModelProto) -> tuple[dict[str, Dims], dict[str, Dims]]:
    """Inputs and outputs of a graph as ``{name: dims}`` (strings are dynamic dims)."""

    def dims(info: onnx.ValueInfoProto) -> Dims:
        shape = info.type.tensor_type.shape.dim
        return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in shape]

    return {i.name: dims(i) for i in model.graph.input}, {
        o.name: dims(o) for o in model.graph.output
    }


def example_inputs(model_name: str) -> tuple[Tensor, ...]:
    """Small tracing inputs (B, H, W are exported as dynamic, so only speed matters).

    Batch 1 halves the float16 trace, which runs on slow CPU half kernels; the sizes keep
    every stage's std over more than one element.
    """
    generator = torch.Generator().manual_seed(0)
    entry = model_entry(model_name)
    shape = entry.trace_inputs_shape()
    return tuple(torch.randn(shape, generator=generator) for _ in entry.inputs)


def artifact_name(weights: Weights, precision: Precision) -> str:
    """``r2p1d_HEKE_4.fp16.onnx``; demo and tiny weights say so in the name too."""
    tags = ("-tiny" if weights.tiny else "") + ("-demo" if weights.demo else "")
    return f"{weights.model}{tags}.{precision}.onnx"


def prepare_output_folder(folder: Path) -> Path:
    """Create ``folder`` and prove it is writable before spending time exporting."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputFolderError(f"cannot write to output folder {folder}: {reason}") from None
    return folder


def _torch_export(
    module: torch.nn.Module, examples: tuple[Tensor, ...], names: Sequence[str]
) -> bytes:
    inputs, outputs = list(names), list(OUTPUTS)
    dynamic = {
        n: ({0: "B", 3: "H", 4: "W"} if examples[0].dim() == 5 else {0: "B", 2: "H", 3: "W"})
        for n in inputs
    }
    dynamic.update({n: {0: "B"} for n in outputs})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (module docstring); silence its notice.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        torch.onnx.export(
            module,
            examples,
            buffer,  # type: ignore[arg-type]  # file objects work; the stub says paths
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move ``Constant`` nodes into initializers (Reduce axes, Unsqueeze axes, scalars)."""
    graph = model.graph
    keep = []
    for node in graph.node:
        value = [a for a in node.attribute if a.name == "value"]
        if node.op_type != "Constant" or not value:
            keep.append(node)
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value[0].t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
    del graph.node[:]
    graph.node.extend(keep)
    return model


def check_graph(model: onnx.ModelProto, label: str) -> None:
    """``check_model(full_check)`` and strict typed shape inference; raise on any problem."""
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExportError(f"{label}: exported graph fails ONNX checks: {first}") from None


def _deploy_module(
    weights: Weights, precision: Precision
) -> tuple[torch.nn.Module, tuple[Tensor, ...]]:
    model = load_model(weights)
    examples = example_inputs(weights.model)
    if precision == "fp32":
        return fp32_deploy(model), examples
    return fp16_deploy(model, weights.model, examples), examples


def onnx_model_from_weights(weights: Weights, precision: Precision = "fp32") -> onnx.ModelProto:
    """The checked, TensorRT-compatible ONNX model (in memory) for ``weights``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    module, examples = _deploy_module(weights, precision)
    names = list(model_entry(weights.model).inputs)
    proto = onnx.load_from_string(_torch_export(module, examples, names))
    proto = constants_to_initializers(proto)
    finish_graph(proto, weights, precision)
    return proto


def finish_graph(
    proto: onnx.ModelProto,
    weights: Weights,
    precision: str,
    tensorrt_view: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None,
) -> None:
    """Stamps ``proto`` with what made it, then checks it with the ONNX checker and the
    static TensorRT check; every exported graph (FP32, FP16, INT8) passes here.
    ``tensorrt_view``: the form TensorRT will parse, where it is not ``proto`` itself
    (INT8: heke_export.qdq_forms)."""
    proto.producer_name, proto.producer_version = "heke-export", "0.1.0"
    proto.doc_string = f"{weights.describe()}; precision {precision}"
    label = f"{weights.model} {precision.split()[0]}"
    check_graph(proto, label)
    parsed = tensorrt_view(proto) if tensorrt_view is not None else proto
    compat = check_tensorrt_compat(parsed, io=io_spec(weights.model, tiny=weights.tiny))
    if not compat:
        count = len(compat.findings)
        raise IncompatibleGraphError(f"{label}: {compat.findings[0]} ({count} problems)")


def onnx_sidecar(
    weights: Weights,
    precision: Precision,
    proto: onnx.ModelProto,
    digest: str,
    quantization: dict[str, Any] | None = None,
) -> Sidecar:
    inputs, outputs = graph_io(proto)
    return Sidecar(
        model=weights.model,
        kind="onnx",
        precision=precision,
        artifact_sha256=digest,
        onnx_sha256=digest,
        weights_sha256=weights.sha256,
        weights_source=weights.source,
        demo_weights=weights.demo,
        preprocess=default_spec(weights.model),
        inputs=inputs,
        outputs=outputs,
        tiny=weights.tiny,
        quantization=quantization,
        created=now_utc(),
    )


def write_artifact(path: Path, data: bytes, sidecar: Sidecar) -> Path:
    """Artifact then sidecar, each via a temporary name; no artifact stays without its sidecar."""
    atomic_write_bytes(path, data)
    try:
        write_sidecar(path, sidecar)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def onnx_from_weights(weights: Weights, out_dir: Path, precision: Precision = "fp32") -> Path:
    """Export, check, and write ``<out_dir>/<name>.onnx`` plus its JSON sidecar.

    The graph is fully checked in memory (ONNX checker, strict shape inference, static
    TensorRT compatibility) before anything is written.
    """
    prepare_output_folder(out_dir)
    proto = onnx_model_from_weights(weights, precision)
    data = proto.SerializeToString()
    sidecar = onnx_sidecar(weights, precision, proto, hashlib.sha256(data).hexdigest())
    return write_artifact(out_dir / artifact_name(weights, precision), data, sidecar)
