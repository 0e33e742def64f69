"""FP16 graphs under float16 semantics (onnx.reference), including T*H*W > 65504."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from heke_export.fp16_oracle import Conv, fp16_evaluator
from heke_export.onnx_export import onnx_model_from_weights
from heke_export.trt_check import check_tensorrt_compat
from heke_export.verify import blind_vector, generated_inputs, torch_outputs
from heke_ref.checkpoint import demo_weights, load_model
from heke_runtime.parity import compare
from heke_runtime.tolerances import FP16_BLIND_SCORE

FP16_MAX = float(np.finfo(np.float16).max)  # 65504


@pytest.fixture(scope="module")
def tiny():
    weights = demo_weights("r2p1d_HEKE_4", tiny=True)
    return weights, onnx_model_from_weights(weights, "fp16")


def _conv_model(x_shape, w, b, **attrs) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


CONVS = [  # 3D strided/padded as in the stem, 3D temporal, grouped 2D as in the heads
    ((1, 3, 4, 15, 20), (6, 3, 1, 7, 7), {"pads": [0, 3, 3, 0, 3, 3], "strides": [1, 2, 2]}),
    ((2, 4, 5, 6, 7), (5, 4, 3, 1, 1), {"pads": [1, 0, 0, 1, 0, 0], "strides": [2, 1, 1]}),
    ((2, 8, 2, 1), (8, 2, 2, 1), {"group": 4}),
]


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), CONVS)
def test_fast_conv_matches_the_stock_reference_conv(x_shape, w_shape, attrs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float16)
    w = (rng.standard_normal(w_shape) / 4).astype(np.float16)
    b = rng.standard_normal(w_shape[0]).astype(np.float16)
    model = _conv_model(x_shape, w, b, **attrs)
    (stock,) = ReferenceEvaluator(model).run(None, {"x": x})
    (fast,) = ReferenceEvaluator(model, new_ops=[Conv]).run(None, {"x": x})
    assert fast.dtype == stock.dtype == np.float16 and fast.shape == stock.shape
    # Same float32 accumulation and float16 rounding; only the order inside dots differs.
    ulp = np.spacing(np.abs(stock).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(fast.astype(np.float32) - stock) <= ulp)
    assert np.mean(fast != stock) < 0.02


def _stage1_count(weights, clips: np.ndarray) -> int:
    with torch.no_grad():
        first = load_model(weights).resnet(torch.from_numpy(clips))[0]
    return int(np.prod(first.shape[2:]))


def test_fp16_graph_stays_finite_when_thw_exceeds_fp16_max(tiny):
    weights, model = tiny
    inputs = generated_inputs("r2p1d_HEKE_4", 1, 144, 256)
    assert _stage1_count(weights, inputs["clips"]) > FP16_MAX  # the case this test is about
    outputs = dict(zip(("heads", "features"), fp16_evaluator(model).run(None, inputs)))
    assert all(np.isfinite(v).all() for v in outputs.values())
    expected = torch_outputs(load_model(weights), inputs)
    scores = compare(
        "fp16 blind scores",
        {"s": blind_vector(outputs["heads"])},
        {"s": blind_vector(expected["heads"])},
        FP16_BLIND_SCORE,
    )
    assert scores, scores.report()
    # std of stage 1 (channels 2C..3C of the first block) is where N enters.
    std_1 = slice(2 * 8, 3 * 8)
    np.testing.assert_allclose(
        outputs["features"][:, std_1], expected["features"][:, std_1], rtol=0.02
    )


def _count_cast_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The bug the design avoids: the element count N cast to float16 (then back)."""
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    counts = {n.output[0] for n in bad.graph.node if n.op_type == "ReduceProd"}
    nodes = []
    for node in bad.graph.node:
        if node.op_type == "Cast" and node.input[0] in counts:
            half = node.output[0] + "_half"
            nodes.append(helper.make_node("Cast", node.input, [half], to=TensorProto.FLOAT16))
            nodes.append(helper.make_node("Cast", [half], node.output, to=TensorProto.FLOAT))
        else:
            nodes.append(node)
    assert len(nodes) == len(bad.graph.node) + len(counts) > len(bad.graph.node)
    del bad.graph.node[:]
    bad.graph.node.extend(nodes)
    return bad


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_oracle_and_static_check_catch_an_fp16_element_count(tiny):
    _, model = tiny
    bad = _count_cast_to_fp16(model)
    evaluator = fp16_evaluator(bad)
    small = evaluator.run(None, generated_inputs("r2p1d_HEKE_4", 1, 32, 48))
    assert all(np.isfinite(v).all() for v in small)  # N small: the bug is invisible
    large = evaluator.run(None, generated_inputs("r2p1d_HEKE_4", 1, 144, 256))
    assert not np.isfinite(large[1]).all()  # N > 65504 -> inf -> NaN std
    rules = {f.rule for f in check_tensorrt_compat(bad).findings}
    assert rules == {"shape-fp16"}
