"""ONNX export of the tiny models: names, dynamic dims, checks, precision layout, sidecars."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from heke_export.onnx_export import OPSET, artifact_name, io_spec, onnx_from_weights
from heke_export.trt_check import HALF
from heke_export.verify import generated_inputs, torch_outputs
from heke_export.wrappers import fold_batchnorm
from heke_ref.checkpoint import Weights, demo_weights, load_model
from heke_runtime.models import model_entry
from heke_runtime.parity import compare
from heke_runtime.sidecar import read_sidecar, sidecar_path
from heke_runtime.spec import default_spec
from heke_runtime.tolerances import ONNX_FP32

MODELS = ("r2p1d_HEKE_4", "resnet_HEKE_4")
INPUTS = {"r2p1d_HEKE_4": ["clips"], "resnet_HEKE_4": ["rgb", "dif"]}


@pytest.fixture(scope="module", params=MODELS)
def tiny_weights(request: pytest.FixtureRequest) -> Weights:
    return demo_weights(request.param, tiny=True)


@pytest.fixture(scope="module")
def exported(tiny_weights: Weights, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp(tiny_weights.model)
    return {p: onnx_from_weights(tiny_weights, out, p) for p in ("fp32", "fp16")}


def _dims(info: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_io_names_dtypes_and_dynamic_dims(exported, tiny_weights, precision):
    model = onnx.load(exported[precision])
    features = io_spec(tiny_weights.model, tiny=True)["features"][1]
    inputs = {i.name: _dims(i) for i in model.graph.input}
    outputs = {o.name: _dims(o) for o in model.graph.output}
    frame = [3, 8, "H", "W"] if tiny_weights.model == "r2p1d_HEKE_4" else [3, "H", "W"]
    assert inputs == {name: ["B", *frame] for name in INPUTS[tiny_weights.model]}
    assert outputs == {"heads": ["B", 4], "features": ["B", features]}
    for info in (*model.graph.input, *model.graph.output):
        assert info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.version for o in model.opset_import if o.domain == ""] == [OPSET]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_is_self_contained_and_passes_strict_checks(exported, precision):
    path = exported[precision]
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        n for p in exported.values() for n in (p.name, sidecar_path(p).name)
    )  # no .onnx.data side file, no leftover temporary
    model = onnx.load(path)
    assert all(i.data_location != onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    constants = {i.name for i in model.graph.initializer}
    reduces = [n for n in model.graph.node if n.op_type.startswith("Reduce") and len(n.input) > 1]
    assert reduces and all(n.input[1] in constants for n in reduces)
    assert not [n for n in model.graph.node if n.op_type == "Constant"]


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {i.name: i.data_type for i in inferred.graph.initializer}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    return types


def test_fp16_graph_puts_backbone_in_fp16_and_statistics_in_fp32(exported, tiny_weights):
    model = onnx.load(exported["fp16"])
    types = _value_types(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    half_convs = [n for n in convs if types[n.input[0]] == onnx.TensorProto.FLOAT16]
    backbone_convs = sum(
        isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))
        for attr in model_entry(tiny_weights.model).backbones
        for m in getattr(load_model(tiny_weights), attr).modules()
    )
    assert len(half_convs) == backbone_convs  # every backbone conv, and only those
    assert all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in convs if n not in half_convs)
    fragile = [n for n in model.graph.node if n.op_type in ("ReduceMean", "Sqrt", "Div", "Sub")]
    assert fragile and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in fragile)
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    casts_to_half = [
        n for n in model.graph.node if n.op_type == "Cast" and types[n.output[0]] in HALF
    ]
    assert len(casts_to_half) == len(INPUTS[tiny_weights.model])  # only the input casts


def test_sidecar_describes_the_artifact(exported, tiny_weights):
    for precision, path in exported.items():
        sidecar = read_sidecar(path)  # also checks the sha256 against the file
        assert path.name == artifact_name(tiny_weights, precision)
        assert "-demo" in path.name and "-tiny" in path.name
        assert (sidecar.model, sidecar.kind, sidecar.precision) == (
            tiny_weights.model,
            "onnx",
            precision,
        )
        assert sidecar.demo_weights and sidecar.tiny
        assert sidecar.weights_sha256 == tiny_weights.sha256
        assert sidecar.onnx_sha256 == sidecar.artifact_sha256
        assert sidecar.preprocess == default_spec(tiny_weights.model)
        assert sidecar.inputs == {
            n: io_spec(tiny_weights.model, tiny=True)[n] for n in sidecar.inputs
        }


def test_fp32_graph_matches_reference_on_ort_at_odd_size_and_batch(exported, tiny_weights):
    session = ort.InferenceSession(str(exported["fp32"]), providers=["CPUExecutionProvider"])
    model = load_model(tiny_weights).double()
    for batch, height, width in ((7, 45, 80), (1, 135, 240)):
        inputs = generated_inputs(tiny_weights.model, batch, height, width)
        actual = dict(zip(("heads", "features"), session.run(["heads", "features"], inputs)))
        result = compare(
            f"{batch}x{height}x{width}", actual, torch_outputs(model, inputs), ONNX_FP32
        )
        assert result, result.report()


def test_batchnorm_folding_keeps_float32_outputs(tiny_weights):
    model = load_model(tiny_weights)
    attr = model_entry(tiny_weights.model).backbones[0]
    backbone = getattr(model, attr)
    example = generated_inputs(tiny_weights.model, 2, 40, 56)
    x = torch.from_numpy(next(iter(example.values())))
    folded = fold_batchnorm(copy.deepcopy(backbone), x)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    with torch.no_grad():
        for before, after in zip(backbone(x), folded(x)):
            np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=1e-4, atol=1e-4)
