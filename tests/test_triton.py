"""``heke-export --triton``: the model repository parses with Triton's own ``ModelConfig``
(the message ``tritonclient`` ships) and says what the artifact's sidecar says.

No Triton server runs here (no GPU, no Triton on CI's machines): these tests check the
configuration with Triton's schema, the served file against the export, and the refusals.
"""

from __future__ import annotations

import dataclasses
import filecmp
import functools
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from typer.testing import CliRunner

from heke_export.cli import app
from heke_export.errors import ExportError
from heke_export.onnx_export import onnx_from_weights, write_artifact
from heke_export.triton import QUEUE_DELAY_US, write_triton_repository
from heke_ref.checkpoint import demo_weights
from heke_runtime.backends import open_backend
from heke_runtime.files import sha256_file
from heke_runtime.models import model_entry
from heke_runtime.sidecar import read_sidecar
from tests.test_backends import tiny_engine

runner = CliRunner()
TINY = ["--demo-weights", "--tiny"]
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


@functools.cache
def triton_model_config():
    """Triton's generated ``model_config_pb2``, as the ``tritonclient`` package ships it.

    Loaded from its file, not as ``tritonclient.grpc.model_config_pb2``: that package's
    ``__init__`` needs grpcio, and its ``grpc`` extra pins protobuf below 7, which other dev
    dependencies need; the generated module itself needs only protobuf. Loaded on first use:
    the GPU image runs only GPU tests, without tritonclient.
    """
    package = importlib.util.find_spec("tritonclient")
    assert package is not None and package.submodule_search_locations, "pip install 'heke[dev]'"
    path = Path(package.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config(folder):
    """``folder/config.pbtxt`` parsed by Triton's ``ModelConfig`` (strict: an unknown field or
    a wrong type is an error)."""
    pb = triton_model_config()
    config = pb.ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(), config)
    return config, pb


def graph_types(path):
    graph = onnx.load(str(path)).graph
    return {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}


def check_model(folder, exported, batch):
    """Every field of the parsed config against the exported artifact's sidecar and graph."""
    config, pb = parse_config(folder)
    sidecar = read_sidecar(exported)
    served = folder / "1" / "model.onnx"
    assert filecmp.cmp(served, exported, shallow=False)
    assert sha256_file(served) == sidecar.artifact_sha256
    assert read_sidecar(served) == sidecar  # the sidecar travels, and matches the served file
    assert config.name == folder.name
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == batch[2]
    types = graph_types(exported)
    for tensors, expected in ((config.input, sidecar.inputs), (config.output, sidecar.outputs)):
        assert [t.name for t in tensors] == list(expected)
        for tensor in tensors:
            dims = expected[tensor.name]
            assert dims[0] == "B"
            assert list(tensor.dims) == [d if isinstance(d, int) else -1 for d in dims[1:]]
            assert pb.DataType.Name(tensor.data_type) == ONNX_TO_TRITON[types[tensor.name]]
            assert tensor.data_type == pb.TYPE_FP32  # the engine I/O contract
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(config.dynamic_batching.preferred_batch_size) == [batch[1]]
    assert config.dynamic_batching.max_queue_delay_microseconds == QUEUE_DELAY_US
    params = {k: v.string_value for k, v in config.parameters.items()}
    spec = json.loads(json.dumps(sidecar.preprocess.to_dict()))  # tuples as JSON lists
    assert json.loads(params.pop("heke_preprocess")) == spec
    assert json.loads(params.pop("heke_heads")) == list(model_entry(sidecar.model).heads)
    assert params == {
        "heke_model": sidecar.model,
        "heke_kind": "onnx",
        "heke_precision": sidecar.precision,
        "heke_artifact_sha256": sidecar.artifact_sha256,
        "heke_onnx_sha256": sidecar.onnx_sha256,
        "heke_weights_sha256": sidecar.weights_sha256,
        "heke_demo_weights": "true",
        "heke_tiny": "true",
        "heke_sidecar_format": "heke-sidecar/1",
    }
    return config


@pytest.mark.parametrize("model", ["r2p1d_HEKE_4", "resnet_HEKE_4"])
def test_repository_matches_the_sidecars(tmp_path, model):
    graphs = {p: tiny_engine(model, p) for p in ("fp32", "fp16")}
    folders = write_triton_repository(tmp_path, graphs, {}, echo=lambda _: None)
    snippets = model_entry(model).num_snippets
    assert sorted(f.name for f in folders) == [f"{model}-tiny-demo", f"{model}-tiny-demo_fp32"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in folders)
    for folder, precision in zip(folders, graphs):
        config = check_model(folder, graphs[precision], (1, snippets, snippets))
        assert config.parameters["heke_precision"].string_value == precision
        assert sorted(p.name for p in folder.rglob("*")) == [
            "1", "config.pbtxt", "model.onnx", "model.onnx.json"
        ]  # fmt: skip
    assert read_sidecar(tmp_path / f"{model}-tiny-demo" / "1" / "model.onnx").precision == "fp16"


def test_the_served_graph_runs_as_exported(tmp_path):
    """The runtime opens the repository's file as it is (its sidecar beside it)."""
    graph = tiny_engine("r2p1d_HEKE_4", "fp32")
    (folder,) = write_triton_repository(tmp_path, {"fp32": graph}, {}, echo=lambda _: None)
    clips = np.random.default_rng(0).standard_normal((2, 3, 8, 32, 40)).astype(np.float32)
    with open_backend(graph) as a, open_backend(folder / "1" / "model.onnx") as b:
        assert np.array_equal(
            a.infer({"clips": clips})["heads"], b.infer({"clips": clips})["heads"]
        )


def test_triton_parser_is_strict(tmp_path):
    """The check can fail: Triton's parser refuses a misspelt field and a wrong enum."""
    (folder,) = write_triton_repository(
        tmp_path, {"fp32": tiny_engine("resnet_HEKE_4", "fp32")}, {}, echo=lambda _: None
    )
    config = folder / "config.pbtxt"
    good = config.read_text()
    for bad in (
        good.replace("max_batch_size", "max_batch"),
        good.replace("TYPE_FP32", "TYPE_FLOAT32"),
    ):
        config.write_text(bad)
        with pytest.raises(text_format.ParseError):
            parse_config(folder)


def _export(*args: str):
    return runner.invoke(app, ["-m", "r2p1d_HEKE_4", *TINY, *args])


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("heke-export: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_writes_the_repository_and_replaces_the_same_model(tmp_path):
    out, repo = tmp_path / "out", tmp_path / "repo"
    (repo / "someone_else" / "1").mkdir(parents=True)
    (repo / "someone_else" / "config.pbtxt").write_text('name: "someone_else"\n')
    args = ("--out", str(out), "--triton", str(repo), "--batch", "1:4:6")
    result = _export(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("wrote Triton model ") == 2
    names = ["r2p1d_HEKE_4-tiny-demo", "r2p1d_HEKE_4-tiny-demo_fp32", "someone_else"]
    assert sorted(p.name for p in repo.iterdir()) == names
    for name, precision in zip(names, ("fp16", "fp32")):
        check_model(repo / name, out / f"r2p1d_HEKE_4-tiny-demo.{precision}.onnx", (1, 4, 6))
    assert (repo / "someone_else" / "config.pbtxt").read_text() == 'name: "someone_else"\n'
    # Again, same weights: the models are replaced (no leftovers), the defaults come back.
    result = _export("--out", str(out), "--triton", str(repo), "--precision", "fp16")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in repo.iterdir()) == names
    check_model(repo / names[0], out / "r2p1d_HEKE_4-tiny-demo.fp16.onnx", (1, 12, 12))


def test_cli_refuses_a_model_from_other_weights_before_exporting(tmp_path):
    repo, out = tmp_path / "repo", tmp_path / "out"
    other = onnx_from_weights(demo_weights("r2p1d_HEKE_4", tiny=True, seed=7), tmp_path, "fp16")
    write_triton_repository(repo, {"fp16": other}, {}, echo=lambda _: None)
    before = (repo / "r2p1d_HEKE_4-tiny-demo" / "config.pbtxt").read_text()
    result = _export("--out", str(out), "--triton", str(repo))
    old = read_sidecar(other).weights_sha256[:12]
    _one_line_error(result, "r2p1d_HEKE_4-tiny-demo", f"from weights {old}", "remove it")
    assert not out.exists()  # refused before anything was exported
    assert (repo / "r2p1d_HEKE_4-tiny-demo" / "config.pbtxt").read_text() == before


def test_cli_refuses_other_versions_and_foreign_folders(tmp_path):
    repo = tmp_path / "repo"
    (repo / "r2p1d_HEKE_4-tiny-demo" / "2").mkdir(parents=True)
    result = _export("--out", str(tmp_path / "o"), "--triton", str(repo))
    _one_line_error(result, "holds model versions 2, which Triton would serve")
    (repo / "r2p1d_HEKE_4-tiny-demo" / "2").rmdir()
    (repo / "r2p1d_HEKE_4-tiny-demo" / "config.pbtxt").write_text("name: 'x'\n")
    result = _export("--out", str(tmp_path / "o"), "--triton", str(repo))
    _one_line_error(result, "was not written by heke-export")
    assert not (tmp_path / "o").exists()


def test_unwritable_repository_is_refused_before_export(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _export("--out", str(tmp_path / "o"), "--triton", str(blocker))
    _one_line_error(result, "cannot write to output folder", str(blocker))
    assert not (tmp_path / "o").exists()


def test_bad_batch_is_a_usage_error_before_export(tmp_path):
    result = _export("--out", str(tmp_path / "o"), "--triton", str(tmp_path), "--batch", "4:2:1")
    assert result.exit_code == 2 and not (tmp_path / "o").exists()


def test_product_code_does_not_need_tritonclient():
    """tritonclient is a test dependency only: the exporter imports none of it."""
    code = (
        "import sys, heke_export.cli, heke_export.triton; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tritonclient', 'grpc')]; "
        "sys.exit(repr(bad) if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _stand_in_plan(graph, tmp_path):
    """Bytes standing in for a TensorRT plan, with the sidecar ``plan_from_onnx`` writes
    (no TensorRT on CI): the repository's TensorRT path without a GPU."""
    sidecar = read_sidecar(graph)
    data = b"stand-in for a serialized TensorRT engine"
    shapes = {"min": [1, 3, 8, 9, 16], "opt": [5, 3, 8, 90, 160], "max": [9, 3, 8, 180, 320]}
    plan = tmp_path / graph.name.replace(".onnx", ".plan")
    info = {"version": "10.13.0", "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    return write_artifact(
        plan,
        data,
        dataclasses.replace(
            sidecar,
            kind="tensorrt",
            artifact_sha256=hashlib.sha256(data).hexdigest(),
            profiles=[{"clips": shapes}],
            tensorrt=info,
        ),
    )


def test_engines_are_served_instead_of_graphs(tmp_path):
    graph = tiny_engine("r2p1d_HEKE_4", "fp16")
    plan = _stand_in_plan(graph, tmp_path)
    repo = tmp_path / "repo"
    (folder,) = write_triton_repository(repo, {"fp16": graph}, {"fp16": plan}, echo=print)
    assert sorted(p.name for p in folder.rglob("*")) == [
        "1", "config.pbtxt", "model.plan", "model.plan.json"
    ]  # fmt: skip
    assert filecmp.cmp(folder / "1" / "model.plan", plan, shallow=False)
    config, pb = parse_config(folder)
    assert (config.platform, config.backend) == ("tensorrt_plan", "tensorrt")
    assert config.max_batch_size == 9  # the engine's profile, not the default 12
    assert list(config.dynamic_batching.preferred_batch_size) == [5]
    assert [list(t.dims) for t in config.input] == [[3, 8, -1, -1]]
    assert all(t.data_type == pb.TYPE_FP32 for t in [*config.input, *config.output])
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["heke_kind"] == "tensorrt"
    assert params["heke_artifact_sha256"] == read_sidecar(plan).artifact_sha256
    assert params["heke_onnx_sha256"] == sha256_file(graph)
    assert json.loads(params["heke_tensorrt"])["version"] == "10.13.0"
    # The same model as an ONNX graph before: replaced by its engine (same weights).
    write_triton_repository(repo, {"fp16": graph}, {}, echo=print)
    write_triton_repository(repo, {"fp16": graph}, {"fp16": plan}, echo=print)
    assert not (folder / "1" / "model.onnx").exists()


def test_an_engine_must_come_from_the_graph_given(tmp_path):
    plan = _stand_in_plan(tiny_engine("r2p1d_HEKE_4", "fp16"), tmp_path)
    other = tiny_engine("r2p1d_HEKE_4", "fp32")
    with pytest.raises(ExportError, match="was not built from"):
        write_triton_repository(tmp_path / "r", {"fp16": other}, {"fp16": plan}, echo=print)
    assert not any((tmp_path / "r").iterdir())
