"""The two forms of heke's INT8 Q/DQ graph: the one written (ONNX Runtime's) and the one
TensorRT parses, derived from it when a plan is built.

``onnxruntime.quantization`` quantizes symmetrically (zero point 0, as TensorRT requires), so
every ReLU sits between a DequantizeLinear and a QuantizeLinear: ``X -> Q -> DQ -> Relu -> Q
-> DQ``. ONNX Runtime's CPU provider then runs each ReLU in float, with a dequantize and a
quantize around it (34 of each in r2p1d, a sixth of the INT8 model time), and a ReLU output
uses 7 of the 8 bits, since its negative half is empty (benchmarks/RESULTS.md, INT8).

:func:`absorb_relus` writes what those ReLUs do into the zero point instead: a ReLU output
``y`` in ``[0, max]`` is quantized with zero point -128 and scale ``max / 255``, so the
quantizer's own clamp at -128 is the ReLU, and all 256 levels cover ``[0, max]``:

- a ReLU read only by its QuantizeLinear goes, with the Q/DQ pair before it:
  ``X -> Q(max/255, -128) -> DQ``. ONNX Runtime fuses ``Conv -> Q`` into ``QLinearConv`` and
  drops nothing else, since nothing else is left;
- a ReLU read by several nodes (the end of a residual block: the next block, its shortcut and
  the statistics) stays, and every pair around it takes the same scale and zero point.

:func:`tensorrt_form` undoes it for TensorRT, which quantizes symmetrically only: each
zero point -128 becomes 0 with scale ``max / 127`` (the same range, 7 bits) and an absorbed
ReLU is put back before its QuantizeLinear, where TensorRT fuses ``Conv -> Relu -> Q``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

RELU_ZERO_POINT = -128  # int8's lowest value: the quantizer's clamp is the ReLU
RELU_LEVELS = 255  # levels above the zero point over [0, max]
SYMMETRIC_LEVELS = 127  # TensorRT's: levels above 0 over [0, max]


class _Graph:
    """Producer and readers of each tensor, and new initializers with unique names."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.made = {o: n for n in graph.node for o in n.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.values = {i.name: i for i in graph.initializer}

    def producer(self, name: str, op: str) -> onnx.NodeProto | None:
        node = self.made.get(name)
        return node if node is not None and node.op_type == op else None

    def only_reader(self, name: str) -> onnx.NodeProto | None:
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 else None

    def value(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.values[name])

    def constant(self, name: str, value: np.ndarray) -> str:
        while name in self.values:
            name += "_"
        tensor = numpy_helper.from_array(value, name)
        self.graph.initializer.append(tensor)
        self.values[name] = tensor
        return name

    def set_params(self, node: onnx.NodeProto, scale: float, zero_point: int) -> None:
        """Private scale and zero point for a Q or DQ node (ONNX Runtime fuses only
        unshared ones: heke_export.int8)."""
        node.input[1] = self.constant(f"{node.name}/scale", np.array(scale, np.float32))
        node.input[2] = self.constant(f"{node.name}/zero_point", np.array(zero_point, np.int8))

    def keep_only(self, dropped: set[str]) -> None:
        alive = [n for n in self.graph.node if n.name not in dropped]
        del self.graph.node[:]
        self.graph.node.extend(alive)
        used = {name for node in alive for name in node.input}
        kept = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        del self.graph.value_info[:]  # types changed; checkers infer them again


def _relu_pairs(
    g: _Graph, relu: onnx.NodeProto
) -> tuple[onnx.NodeProto, onnx.NodeProto, list[onnx.NodeProto]] | None:
    """``(Q, DQ, [Q...])`` around ``relu`` when it reads a private Q/DQ pair and at least one
    QuantizeLinear reads it; None for any other ReLU (left as it is)."""
    dq = g.producer(relu.input[0], "DequantizeLinear")
    q = g.producer(dq.input[0], "QuantizeLinear") if dq is not None else None
    if q is None or dq is None or g.only_reader(q.output[0]) is not dq:
        return None
    if g.only_reader(dq.output[0]) is not relu:
        return None
    after = [n for n in g.readers.get(relu.output[0], []) if n.op_type == "QuantizeLinear"]
    return (q, dq, after) if after else None


def _dequantizers(g: _Graph, quantizers: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    return [r for q in quantizers for r in g.readers.get(q.output[0], [])]


def absorb_relus(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's form of a symmetric Q/DQ graph (module docstring); ``proto`` is changed
    in place and returned."""
    g = _Graph(proto.graph)
    dropped: set[str] = set()
    for relu in [n for n in proto.graph.node if n.op_type == "Relu"]:
        found = _relu_pairs(g, relu)
        if found is None:
            continue
        q, dq, after = found
        # The calibrated symmetric scale of the ReLU output is max / 127.
        scale = float(g.value(after[0].input[1])) * SYMMETRIC_LEVELS / RELU_LEVELS
        if len(g.readers[relu.output[0]]) == 1:  # only its Q reads it: the ReLU goes
            after[0].input[0] = q.input[0]
            dropped |= {q.name, dq.name, relu.name}
            pairs = [after[0], *_dequantizers(g, after)]
        else:  # a block's end: the statistics read the ReLU in float
            pairs = [q, dq, *after, *_dequantizers(g, after)]
        for node in pairs:
            g.set_params(node, scale, RELU_ZERO_POINT)
    g.keep_only(dropped)
    return proto


def _holds_relu_output(g: _Graph, node: onnx.NodeProto) -> bool:
    if len(node.input) < 3 or node.input[2] not in g.values:
        return False
    return int(g.value(node.input[2]).reshape(-1)[0]) == RELU_ZERO_POINT


def _relu_absorbed(g: _Graph, q: onnx.NodeProto) -> bool:
    """Whether ``q`` stands for a ReLU no node computes any more."""
    if g.producer(q.input[0], "Relu") is not None:
        return False
    dequantized = [d.output[0] for d in g.readers.get(q.output[0], [])]
    return not all(
        any(r.op_type == "Relu" for r in g.readers.get(name, [])) for name in dequantized
    )


def tensorrt_form(proto: onnx.ModelProto) -> onnx.ModelProto:
    """TensorRT's form of an :func:`absorb_relus` graph (module docstring): a new model,
    ``proto`` is left as it is."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    g = _Graph(model.graph)
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and _holds_relu_output(g, node):
            scale = float(g.value(node.input[1])) * RELU_LEVELS / SYMMETRIC_LEVELS
            if node.op_type == "QuantizeLinear" and _relu_absorbed(g, node):
                out = f"{node.name}/relu"
                nodes.append(helper.make_node("Relu", [node.input[0]], [out], name=out))
                node.input[0] = out
            g.set_params(node, scale, 0)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    g.keep_only(set())
    return model
