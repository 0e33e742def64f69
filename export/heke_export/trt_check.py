"""Will TensorRT's ONNX parser take this graph? A static check that needs no TensorRT.

Rules (trt_notes.md §7), each finding tagged with its rule:

- ``opset``: default-domain opset inside the vendored parser range; no other domains.
- ``op``: every op is marked supported in the ONNX-TensorRT matrix (``data/onnx_trt_ops.json``)
  and every input/output dtype is among its listed types (DOUBLE is in none).
- ``constant-input``: inputs the matrix says must be initializers (Reduce ``axes``,
  Unsqueeze ``axes``...), plus Conv ``W``/``B`` (the importer reads bias only as weights).
- ``shape-fp16``: no Cast to float16/bfloat16 of a value computed from ``Shape``/``Size``
  (an element count ``T*H*W`` above 65504 becomes inf, std becomes NaN).
- ``fp16-policy``: heke's own rule: accumulating statistics (mean/sum/prod reductions, Sqrt,
  Div, Pow) never run in 16-bit floats; graph I/O is never 16-bit.
- ``io``: with expected I/O dims given, names, ranks and which dims are dynamic match.
- ``types``: strict typed shape inference succeeds (a float16/float32 mix fails here, as it
  would in a strongly typed network).
- ``qdq``: explicit quantization as TensorRT takes it: QuantizeLinear of a float tensor to
  INT8 and DequantizeLinear of INT8 back to float (no UINT8, no INT32 bias), scales and zero
  points as initializers, every zero point 0 (TensorRT quantizes symmetrically), a scale
  vector only with a valid ``axis`` and one scale per channel, and a Conv weight dequantized
  per output channel (axis 0). A Conv weight or bias that is a DequantizeLinear of an
  initializer counts as an initializer (TensorRT folds the pair into INT8 weights). A Conv
  with INT8 weights reads a dequantized activation, the pattern TensorRT fuses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import TensorProto

from heke_export.trt_ops import support_matrix

HALF = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
ACCUMULATING = {
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "Sqrt",
    "Div",
    "Pow",
}
# Inputs that must be weights although the 10.x matrix no longer says so (importer source).
EXTRA_CONSTANT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2)}
QDQ = ("QuantizeLinear", "DequantizeLinear")
QUANTIZED = {TensorProto.INT8}  # what heke's int8 graphs use; TensorRT also takes FP8/INT4
SCALES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Finding:
    rule: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.where}: {self.message}"


@dataclass(frozen=True)
class CompatReport:
    label: str
    nodes: int
    findings: list[Finding] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        verdict = "PASSED" if self else "FAILED"
        count = len(self.findings)
        return f"{verdict} | tensorrt-compat | {self.label} | {self.nodes} nodes, {count} problems"

    def report(self) -> str:
        return "\n".join([*(f"  {f}" for f in self.findings), self.summary()])


@dataclass(frozen=True)
class _Graph:
    model: onnx.ModelProto
    types: dict[str, int]
    constants: set[str]
    opset: int

    @property
    def nodes(self) -> Sequence[onnx.NodeProto]:
        return self.model.graph.node


def _node_name(node: onnx.NodeProto) -> str:
    return f"{node.op_type} {node.name or node.output[0]}"


def _inferred(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Finding]]:
    try:
        strict = onnx.shape_inference.infer_shapes(
            model, check_type=True, strict_mode=True, data_prop=True
        )
        return strict, []
    except onnx.shape_inference.InferenceError as exc:
        first = str(exc).strip().splitlines()[0]
        return onnx.shape_inference.infer_shapes(model), [Finding("types", "graph", first)]


def _graph_view(model: onnx.ModelProto) -> _Graph:
    graph = model.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    constants = {init.name for init in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    constants |= {
        n.output[0]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and all(i in constants for i in n.input if i)
    }
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return _Graph(model, types, constants, opset)


def _check_opset(g: _Graph) -> Iterator[Finding]:
    matrix = support_matrix()
    if not matrix.opset_min <= g.opset <= matrix.opset_max:
        yield Finding(
            "opset",
            "model",
            f"opset {g.opset} outside the parser range {matrix.opset_min}..{matrix.opset_max}",
        )
    for entry in g.model.opset_import:
        if entry.domain not in ("", "ai.onnx"):
            yield Finding(
                "opset", "model", f"custom domain {entry.domain!r} needs a TensorRT plugin"
            )


def _check_ops(g: _Graph) -> Iterator[Finding]:
    operators = support_matrix().operators
    for node in g.nodes:
        support = operators.get(node.op_type)
        if support is None or not support.supported:
            yield Finding("op", _node_name(node), "not supported by the TensorRT ONNX parser")
            continue
        # Q/DQ: the matrix types their quantized side only; the ``qdq`` rule checks the rest
        typed = node.input[:1] if node.op_type in QDQ else (*node.input, *node.output)
        for name in typed:
            dtype = g.types.get(name)
            if name and dtype is None:
                yield Finding(
                    "op", _node_name(node), f"type of {name!r} unknown after shape inference"
                )
            elif name and dtype not in support.types:
                yield Finding(
                    "op",
                    _node_name(node),
                    f"{name!r} is {TensorProto.DataType.Name(dtype)}, not supported here",
                )


def _constant_positions(node: onnx.NodeProto, opset: int) -> list[int]:
    support = support_matrix().operators[node.op_type]
    try:
        schema = onnx.defs.get_schema(node.op_type, opset)
    except onnx.defs.SchemaError:
        return []
    names = [p.name for p in schema.inputs]
    wanted = [names.index(n) for n in support.constant_inputs() if n in names]
    return sorted(set(wanted) | set(EXTRA_CONSTANT_INPUTS.get(node.op_type, ())))


def _check_constant_inputs(g: _Graph) -> Iterator[Finding]:
    operators = support_matrix().operators
    for node in g.nodes:
        if node.op_type not in operators:
            continue
        for index in _constant_positions(node, g.opset):
            if (
                index < len(node.input)
                and node.input[index]
                and node.input[index] not in g.constants
            ):
                yield Finding(
                    "constant-input",
                    _node_name(node),
                    f"input {index} ({node.input[index]!r}) must be an initializer",
                )


def _shape_derived(g: _Graph) -> set[str]:
    """Tensors computed only from Shape/Size outputs and constants (graph is topological)."""
    derived: set[str] = set()
    for node in g.nodes:
        if node.op_type in ("Shape", "Size"):
            derived.update(node.output)
            continue
        live = [i for i in node.input if i and i not in g.constants]
        if live and all(i in derived for i in live):
            derived.update(node.output)
    return derived


def _check_shape_casts(g: _Graph) -> Iterator[Finding]:
    derived = _shape_derived(g)
    for node in g.nodes:
        if (
            node.op_type in ("Cast", "CastLike")
            and node.input[0] in derived
            and g.types.get(node.output[0]) in HALF
        ):
            yield Finding(
                "shape-fp16",
                _node_name(node),
                f"casts shape-derived {node.input[0]!r} to 16-bit float (overflows above 65504)",
            )


def _check_fp16_policy(g: _Graph) -> Iterator[Finding]:
    for node in g.nodes:
        if node.op_type in ACCUMULATING and g.types.get(node.input[0]) in HALF:
            yield Finding(
                "fp16-policy",
                _node_name(node),
                "accumulates in 16-bit float; keep statistics in float32",
            )
    for info in (*g.model.graph.input, *g.model.graph.output):
        if info.type.tensor_type.elem_type in HALF:
            yield Finding("fp16-policy", f"graph I/O {info.name}", "is 16-bit; I/O stays float32")


def _initializer(g: _Graph, name: str) -> onnx.TensorProto | None:
    return next((i for i in g.model.graph.initializer if i.name == name), None)


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _check_qdq_node(g: _Graph, node: onnx.NodeProto) -> Iterator[Finding]:
    where = _node_name(node)
    quantized = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
    if g.types.get(quantized) not in QUANTIZED:
        kind = TensorProto.DataType.Name(g.types.get(quantized, 0))
        yield Finding("qdq", where, f"{quantized!r} is {kind}; TensorRT quantizes to INT8")
    scale = _initializer(g, node.input[1]) if len(node.input) > 1 else None
    zero = _initializer(g, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None or (len(node.input) > 2 and node.input[2] and zero is None):
        yield Finding("qdq", where, "scale and zero point must be initializers")
        return
    if scale.data_type not in SCALES:
        yield Finding("qdq", where, f"scale is {TensorProto.DataType.Name(scale.data_type)}")
    if zero is not None and onnx.numpy_helper.to_array(zero).any():
        yield Finding("qdq", where, "zero point is not 0; TensorRT needs symmetric quantization")
    yield from _check_axis(g, node, scale, where)


def _check_axis(
    g: _Graph, node: onnx.NodeProto, scale: onnx.TensorProto, where: str
) -> Iterator[Finding]:
    channels = int(np.prod(scale.dims)) if scale.dims else 1
    if len(scale.dims) > 1:
        yield Finding("qdq", where, f"scale of rank {len(scale.dims)}; blocked scales unsupported")
    if channels == 1:
        return
    data = _initializer(g, node.input[0])
    if data is None:
        yield Finding("qdq", where, "per-channel scales on an activation; TensorRT needs weights")
        return
    axis = _axis(node) % len(data.dims) if data.dims else 0
    if not data.dims or data.dims[axis] != channels:
        yield Finding("qdq", where, f"{channels} scales for axis {axis} of {list(data.dims)}")


def _check_conv_weights(g: _Graph) -> Iterator[Finding]:
    made_by = {n.output[0]: n for n in g.nodes if n.op_type == "DequantizeLinear"}
    for node in g.nodes:
        dq = made_by.get(node.input[1]) if node.op_type == "Conv" else None
        scale = _initializer(g, dq.input[1]) if dq is not None else None
        if dq is None or scale is None or len(scale.dims) != 1 or scale.dims[0] == 1:
            continue
        if _axis(dq) != 0:
            yield Finding("qdq", _node_name(node), f"weight dequantized on axis {_axis(dq)}, not 0")


def _check_fusable(g: _Graph) -> Iterator[Finding]:
    """A convolution with INT8 weights reads an INT8 activation (a DequantizeLinear), the
    pattern TensorRT fuses into one INT8 kernel; with a float input it would run in float."""
    made_by = {o: n for n in g.nodes for o in n.output}

    def dequantized(name: str) -> bool:
        node = made_by.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    for node in g.nodes:
        if node.op_type == "Conv" and dequantized(node.input[1]) and not dequantized(node.input[0]):
            yield Finding(
                "qdq", _node_name(node), "INT8 weights but a float input: TensorRT cannot fuse it"
            )


def _check_qdq(g: _Graph) -> Iterator[Finding]:
    for node in g.nodes:
        if node.op_type in QDQ:
            yield from _check_qdq_node(g, node)
    yield from _check_conv_weights(g)
    yield from _check_fusable(g)


def _dims(info: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_param if d.HasField("dim_param") else d.dim_value
        for d in info.type.tensor_type.shape.dim
    ]


def _check_io(g: _Graph, expected: Mapping[str, Sequence[int | str]]) -> Iterator[Finding]:
    actual = {i.name: _dims(i) for i in (*g.model.graph.input, *g.model.graph.output)}
    if set(actual) != set(expected):
        yield Finding("io", "graph", f"I/O names {sorted(actual)} != expected {sorted(expected)}")
        return
    for name, dims in expected.items():
        got = actual[name]
        same = len(got) == len(dims) and all(
            isinstance(a, str) == isinstance(e, str) and (isinstance(e, str) or a == e)
            for a, e in zip(got, dims)
        )
        if not same:
            yield Finding("io", name, f"dims {got} != expected {list(dims)} (strings are dynamic)")


def _check_external_data(model: onnx.ModelProto, base: Path | None) -> Iterator[Finding]:
    for init in model.graph.initializer:
        if init.data_location != TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in init.external_data if e.key == "location"), "")
        if base is None or not (base / location).is_file():
            yield Finding(
                "external-data", init.name, f"weights file {location!r} not found beside the model"
            )


def check_tensorrt_compat(
    model: onnx.ModelProto | Path,
    *,
    io: Mapping[str, Sequence[int | str]] | None = None,
    label: str | None = None,
) -> CompatReport:
    """Run every rule on ``model`` (a loaded model or a path); the report is truthy on pass."""
    base = model.parent if isinstance(model, Path) else None
    if isinstance(model, Path):
        label = label or model.name
        model = onnx.load(model, load_external_data=False)
    inferred, findings = _inferred(model)
    g = _graph_view(inferred)
    findings += [
        *_check_opset(g),
        *_check_ops(g),
        *_check_constant_inputs(g),
        *_check_shape_casts(g),
        *_check_fp16_policy(g),
        *_check_qdq(g),
        *(_check_io(g, io) if io is not None else ()),
        *_check_external_data(model, base),
    ]
    return CompatReport(label or model.graph.name, len(model.graph.node), findings)
