"""The static TensorRT-compatibility check: passes heke's graphs, catches bad ones."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from heke_export.onnx_export import io_spec, onnx_model_from_weights
from heke_export.trt_check import check_tensorrt_compat
from heke_export.trt_ops import support_matrix
from heke_ref.checkpoint import demo_weights

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


@pytest.fixture(scope="module", params=["r2p1d_HEKE_4", "resnet_HEKE_4"])
def model_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_heke_graphs_pass(model_name, precision):
    model = onnx_model_from_weights(demo_weights(model_name, tiny=True), precision)
    report = check_tensorrt_compat(model, io=io_spec(model_name, tiny=True), label=precision)
    assert report, report.report()
    assert report.summary().startswith(f"PASSED | tensorrt-compat | {precision} |")


def test_support_matrix_is_sourced_data():
    matrix = support_matrix()
    assert matrix.source["repository"].endswith("onnx/onnx-tensorrt")
    assert matrix.source["path"] == "docs/operators.md" and len(matrix.source["commit"]) == 40
    assert matrix.opset_min <= 18 <= matrix.opset_max
    assert HALF in matrix.operators["Conv"].types
    assert TensorProto.DOUBLE not in matrix.operators["Conv"].types
    assert matrix.operators["ReduceMean"].constant_inputs() == ["axes"]
    assert not matrix.operators["Det"].supported


def _model(nodes, inputs, outputs, inits=(), opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bad", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, dtype, dims):
    return helper.make_tensor_value_info(name, dtype, dims)


def _rules(model, **kwargs) -> set[str]:
    report = check_tensorrt_compat(model, **kwargs)
    assert not report and report.summary().startswith("FAILED | tensorrt-compat")
    return {f.rule for f in report.findings}


def test_catches_reduce_axes_from_a_graph_input():
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)]
    model = _model(
        nodes,
        [_vi("x", FLOAT, ["B", 4, "H"]), _vi("axes", TensorProto.INT64, [1])],
        [_vi("y", FLOAT, None)],
    )
    assert _rules(model) == {"constant-input"}


def test_catches_conv_weights_that_are_not_initializers():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    model = _model(
        nodes,
        [_vi("x", FLOAT, [1, 2, 8, 8]), _vi("w", FLOAT, [3, 2, 1, 1])],
        [_vi("y", FLOAT, None)],
    )
    assert _rules(model) == {"constant-input"}


def test_catches_unsupported_op_and_double():
    nodes = [helper.make_node("Det", ["x"], ["i"]), helper.make_node("Sqrt", ["d"], ["s"])]
    inputs = [_vi("x", FLOAT, [2, 3, 3]), _vi("d", TensorProto.DOUBLE, [4])]
    outputs = [_vi("i", FLOAT, None), _vi("s", TensorProto.DOUBLE, None)]
    report = check_tensorrt_compat(_model(nodes, inputs, outputs))
    assert {f.rule for f in report.findings} == {"op"}
    messages = " ".join(str(f) for f in report.findings)
    assert "Det" in messages and "'d' is DOUBLE" in messages


def test_catches_opset_outside_parser_range():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = _model(
        nodes, [_vi("x", FLOAT, [4])], [_vi("y", FLOAT, [4])], opset=support_matrix().opset_max + 1
    )
    assert "opset" in _rules(model)


def _std_count_graph(count_type: int) -> onnx.ModelProto:
    """x[B,C,N] -> fp16 copy -> N = Cast(ReduceProd(Gather(Shape(copy), 2))) -> ReduceSum(x)/N."""
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    index = numpy_helper.from_array(np.array([2], np.int64), "index")
    nodes = [
        helper.make_node("Cast", ["x"], ["xh"], to=HALF),
        helper.make_node("Shape", ["xh"], ["shape"]),
        helper.make_node("Gather", ["shape", "index"], ["dims"], axis=0),
        helper.make_node("ReduceProd", ["dims"], ["n"], keepdims=0),
        helper.make_node("Cast", ["n"], ["n_f"], to=count_type),
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
        helper.make_node("Cast", ["n_f"], ["n32"], to=FLOAT),
        helper.make_node("Div", ["s", "n32"], ["y"]),
    ]
    return _model(
        nodes, [_vi("x", FLOAT, ["B", 2, "N"])], [_vi("y", FLOAT, ["B", 2])], [axes, index]
    )


def test_catches_fp16_cast_of_a_shape_derived_count():
    assert check_tensorrt_compat(_std_count_graph(FLOAT)).findings == []
    assert _rules(_std_count_graph(HALF)) == {"shape-fp16"}


def test_catches_fp16_statistics_and_fp16_io():
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)]
    model = _model(nodes, [_vi("x", HALF, [2, 8])], [_vi("y", HALF, [2])], [axes])
    assert _rules(model) == {"fp16-policy"}


def test_catches_type_mix_and_io_mismatch():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    model = _model(
        nodes, [_vi("a", FLOAT, ["B", 4]), _vi("b", HALF, ["B", 4])], [_vi("y", FLOAT, ["B", 4])]
    )
    assert "types" in _rules(model)
    ok = _model(
        [helper.make_node("Relu", ["a"], ["y"])],
        [_vi("a", FLOAT, ["B", 4])],
        [_vi("y", FLOAT, ["B", 4])],
    )
    assert check_tensorrt_compat(ok, io={"a": ["B", 4], "y": ["B", 4]})
    assert _rules(ok, io={"a": [1, 4], "y": ["B", 4]}) == {"io"}  # B must stay dynamic
