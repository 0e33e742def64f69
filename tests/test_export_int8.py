"""INT8 Q/DQ export on the tiny model: the CLI, the sidecar, the graph (Q/DQ, per-channel
weights, statistics and heads in FP32), the integer kernels ONNX Runtime runs, heke-run,
``--verify`` refusing a bad calibration, and the static TensorRT check on Q/DQ graphs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from heke_export.cli import app
from heke_export.int8 import (
    DEFAULT_CLIPS,
    CalibrationError,
    calibration_paths,
    content_sha256,
    default_calibration_paths,
)
from heke_export.int8_verify import verify_int8
from heke_export.onnx_export import onnx_model_from_weights
from heke_export.qdq_forms import RELU_ZERO_POINT, tensorrt_form
from heke_export.trt_check import check_tensorrt_compat
from heke_ref.checkpoint import demo_weights
from heke_runtime.backends import open_backend
from heke_runtime.cli import main as heke_run
from heke_runtime.scorer import Scorer
from heke_runtime.sidecar import read_sidecar

runner = CliRunner()
TINY = ["-m", "r2p1d_HEKE_4", "--demo-weights", "--tiny", "--precision", "int8"]
STATISTICS = {"ReduceMean", "ReduceMax", "ReduceProd", "Sqrt", "Div", "Sub", "Mul", "Cast"}


@pytest.fixture(scope="module")
def int8_graph(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8")
    result = runner.invoke(app, [*TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    path = out / "r2p1d_HEKE_4-tiny-demo.int8.onnx"
    assert f"wrote {path}" in result.output
    return path


def _fp32_tiny() -> onnx.ModelProto:
    return onnx_model_from_weights(demo_weights("r2p1d_HEKE_4", tiny=True), "fp32")


def _relus(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
    """Each ReLU of ``model`` and the nodes that read it."""
    return [
        (relu, [n for n in model.graph.node if relu.output[0] in n.input])
        for relu in model.graph.node
        if relu.op_type == "Relu"
    ]


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def test_sidecar_records_calibration_method_and_fp32_source(int8_graph):
    side = read_sidecar(int8_graph)
    assert side.precision == "int8" and side.kind == "onnx" and side.demo_weights
    record = side.quantization
    assert record is not None and record["method"] == "minmax"
    calibration = record["calibration"]
    assert calibration["default_set"] and calibration["snippets_per_video"] == 3
    assert [Path(p).name for p in calibration["paths"]] == list(DEFAULT_CLIPS)
    assert calibration["content_sha256"] == content_sha256(default_calibration_paths())
    fp32 = onnx_model_from_weights(demo_weights("r2p1d_HEKE_4", tiny=True), "fp32")
    assert record["fp32_onnx_sha256"] == hashlib.sha256(fp32.SerializeToString()).hexdigest()
    kept = set(record["fp32_nodes"])
    assert {"/model/group_conv_1/Conv", "/model/Sqrt", "/model/ReduceMax"} <= kept
    assert not any(name.startswith("/model/resnet/stem") for name in kept)


def test_graph_is_qdq_with_per_channel_weights_and_fp32_statistics(int8_graph):
    model = onnx.load(int8_graph)
    made_by, init = _producers(model), _initializers(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 20
    backbone = [n for n in model.graph.node if n.op_type == "Conv" and "/resnet/" in n.name]
    assert len(backbone) == 21
    for conv in backbone:
        dq = made_by[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert init[dq.input[0]].data_type == onnx.TensorProto.INT8
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        out_channels = init[dq.input[0]].dims[0]
        assert axis == 0 and list(init[dq.input[1]].dims) == [out_channels]
        assert made_by[conv.input[0]].op_type == "DequantizeLinear"  # quantized activation
    for node in model.graph.node:
        if node.op_type in STATISTICS or "group_conv" in node.name:
            for name in node.input:  # never a rounded copy of a tensor
                assert name not in made_by or made_by[name].op_type != "DequantizeLinear", node.name
        if "group_conv" in node.name:
            assert init[node.input[1]].data_type == onnx.TensorProto.FLOAT
    # Symmetric but where a ReLU's output is held: zero point -128 (heke_export.qdq_forms).
    zeros = {
        n.name: int(onnx.numpy_helper.to_array(init[n.input[2]]))
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
    }
    assert set(zeros.values()) == {0, RELU_ZERO_POINT}
    relu_outputs = {n for n, z in zeros.items() if z == RELU_ZERO_POINT}
    for node in model.graph.node:
        if node.op_type == "Relu":  # a block's end: its pairs are on [0, max] too
            for reader in (n for n in model.graph.node if node.output[0] in n.input):
                assert reader.op_type != "QuantizeLinear" or reader.name in relu_outputs


def kernels_run(graph: Path, height: int, width: int, folder: Path) -> list[str]:
    """The op of every kernel ONNX Runtime's CPU provider ran for one clip (its profile)."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    clip = np.random.default_rng(0).standard_normal((1, 3, 8, height, width))
    session.run(None, {"clips": clip.astype(np.float32)})
    events = json.loads(Path(session.end_profiling()).read_text())
    return [
        e["args"]["op_name"]
        for e in events
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]


def test_onnx_runtime_runs_every_backbone_conv_with_integer_kernels(int8_graph, tmp_path):
    kernels = kernels_run(int8_graph, 64, 80, tmp_path)
    assert kernels.count("QLinearConv") == 21  # every backbone conv
    assert kernels.count("Conv") == 3  # the three heads, kept FP32
    # No float ReLU between integer kernels: only ReLUs read by several nodes (a block's
    # end: the next block, its shortcut, the statistics) are computed; the others are zero
    # points.
    shared = [r for r in _relus(_fp32_tiny()) if len(r[1]) > 1]
    assert 0 < len(shared) < len(_relus(_fp32_tiny()))
    assert kernels.count("Relu") == len(shared)


def test_int8_graphs_run_two_snippets_per_call_on_cpu(int8_graph):
    # Their integer kernels gain from it (heke_runtime.backends.onnxruntime.INT8_CPU_BATCH);
    # FP32 graphs keep one.
    assert Scorer(int8_graph).batch_size == 2
    assert open_backend(int8_graph, "onnxruntime-cuda").preferred_batch_size is None


def test_heke_run_scores_the_int8_graph(int8_graph, tmp_path, capsys):
    out = tmp_path / "records.jsonl"
    clip = default_calibration_paths()[2]
    assert heke_run([str(clip), "--engine", str(int8_graph), "--output", str(out)]) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert record["engine"]["precision"] == "int8"
    assert all(np.isfinite(v) for v in record["scores"].values())


def _constant_video(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 176, 144, "yuv420p"
        frame = np.full((144, 176, 3), 128, np.uint8)
        for _ in range(60):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_verify_refuses_a_constant_frame_calibration_with_figures(tmp_path, int8_graph):
    bad = _constant_video(tmp_path / "gray.mp4")
    args = [*TINY, "--out", str(tmp_path / "out"), "--calibration", str(bad), "--verify"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    summary = [line for line in result.stdout.splitlines() if line.startswith("FAILED | verify")]
    assert len(summary) == 1 and "feature rel. error f1" in summary[0], result.output
    assert "blind scores max diff" in summary[0] and "(bar 0.02)" in summary[0]
    # the good calibration is far closer: the refusal is about calibration, not int8 itself
    good = verify_int8(int8_graph, demo_weights("r2p1d_HEKE_4", tiny=True))
    bad_report = verify_int8(
        tmp_path / "out" / int8_graph.name, demo_weights("r2p1d_HEKE_4", tiny=True)
    )
    worst = [max(r.outputs[0].max_abs for r in rep.results) for rep in (good, bad_report)]
    assert worst[1] > 5 * worst[0], worst


def test_calibration_is_only_for_int8(tmp_path):
    args = ["-m", "r2p1d_HEKE_4", "--demo-weights", "--tiny", "--calibration", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--calibration" in result.output


def test_tensorrt_check_accepts_the_tensorrt_form_only(int8_graph):
    report = check_tensorrt_compat(tensorrt_form(onnx.load(int8_graph)))
    assert report, report.report()
    # The file as written holds zero points TensorRT refuses: heke-export derives the form.
    written = check_tensorrt_compat(int8_graph)
    assert not written and all("zero point is not 0" in str(f) for f in written.findings)


def test_tensorrt_form_restores_every_relu_on_the_same_ranges(int8_graph):
    written = onnx.load(int8_graph)
    model = tensorrt_form(written)
    init = _initializers(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Relu") == len(_relus(_fp32_tiny()))  # the FP32 graph's, all back
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        assert not onnx.numpy_helper.to_array(init[q.input[2]]).any()
    # The ranges are the calibrated ones: max / 255 with zero point -128 is max / 127 here.
    before = {
        n.input[0]: float(onnx.numpy_helper.to_array(_initializers(written)[n.input[1]]))
        for n in written.graph.node
        if n.op_type == "QuantizeLinear"
    }
    made_by, restored = _producers(model), 0
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        relu = made_by.get(q.input[0])
        if relu is not None and relu.op_type == "Relu" and relu.input[0] in before:
            scale = float(onnx.numpy_helper.to_array(init[q.input[1]]))
            assert scale == pytest.approx(before[relu.input[0]] * 255 / 127, rel=1e-6)
            restored += 1
    absorbed = len(_relus(_fp32_tiny())) - [n.op_type for n in written.graph.node].count("Relu")
    assert restored == absorbed > 0


def _edited(path: Path, edit) -> onnx.ModelProto:
    model = tensorrt_form(onnx.load(path))
    edit(model)
    return model


def _first(model: onnx.ModelProto, op: str, weights: bool) -> onnx.NodeProto:
    init = _initializers(model)
    return next(n for n in model.graph.node if n.op_type == op and (n.input[0] in init) == weights)


def test_tensorrt_check_refuses_an_asymmetric_zero_point(int8_graph):
    def shift(model):
        name = _first(model, "QuantizeLinear", weights=False).input[2]
        zero = _initializers(model)[name]
        zero.CopyFrom(onnx.numpy_helper.from_array(np.array(3, np.int8), name))

    report = check_tensorrt_compat(_edited(int8_graph, shift))
    assert not report and any("zero point is not 0" in str(f) for f in report.findings)


def test_tensorrt_check_refuses_weights_quantized_on_the_wrong_axis(int8_graph):
    def turn(model):
        dq = _first(model, "DequantizeLinear", weights=True)
        for attribute in dq.attribute:
            if attribute.name == "axis":
                attribute.i = 1

    report = check_tensorrt_compat(_edited(int8_graph, turn))
    assert not report and any(f.rule == "qdq" for f in report.findings)


def test_tensorrt_check_refuses_scales_that_are_not_initializers(int8_graph):
    def compute(model):
        q = _first(model, "QuantizeLinear", weights=False)
        scale = onnx.helper.make_node("Identity", [q.input[1]], ["computed_scale"])
        model.graph.node.insert(0, scale)
        q.input[1] = "computed_scale"

    report = check_tensorrt_compat(_edited(int8_graph, compute))
    assert any("must be initializers" in str(f) for f in report.findings)


def test_tensorrt_check_refuses_a_quantized_conv_reading_a_float_input(int8_graph):
    def unquantize_input(model):
        made_by = _producers(model)
        conv = next(
            n
            for n in model.graph.node
            if n.op_type == "Conv" and made_by[n.input[0]].op_type == "DequantizeLinear"
        )
        conv.input[0] = made_by[made_by[conv.input[0]].input[0]].input[0]  # DQ <- Q <- float

    report = check_tensorrt_compat(_edited(int8_graph, unquantize_input))
    assert any("TensorRT cannot fuse it" in str(f) for f in report.findings), report.report()


def test_calibration_videos_are_named_as_heke_runs_inputs(tmp_path):
    clips = default_calibration_paths()
    nested = tmp_path / "set" / "more"
    nested.mkdir(parents=True)
    for clip, folder in zip(clips[:2], (tmp_path / "set", nested)):
        (folder / clip.name).write_bytes(clip.read_bytes())
    (tmp_path / "set" / "notes.md").write_text("not a video")
    found = calibration_paths(tmp_path / "set")  # recursive, videos only, sorted
    assert found == (tmp_path / "set" / clips[0].name, nested / clips[1].name)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# chosen\nset/{clips[0].name}\n\n{clips[2]}\n")
    assert calibration_paths(listing) == (tmp_path / "set" / clips[0].name, clips[2])
    assert calibration_paths(clips[3]) == (clips[3],)
    assert calibration_paths(None) is None


def test_a_calibration_set_naming_nothing_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.txt").write_text("gone.mp4\n")
    cases = {
        tmp_path / "absent.mp4": "absent.mp4: no such file or directory",
        tmp_path / "empty": "holds no video files",
        tmp_path / "list.txt": "gone.mp4: no such file or directory",
    }
    for source, reason in cases.items():
        with pytest.raises(CalibrationError) as caught:
            calibration_paths(source)
        message = str(caught.value)
        assert message.startswith(f"calibration set {source}: ") and "\n" not in message
        assert reason in message, message
