"""``heke-export --triton DIR``: an NVIDIA Triton Inference Server model repository.

Layout (Triton's model repository convention, one model version)::

    DIR/<name>/config.pbtxt
    DIR/<name>/1/model.onnx        model.plan for a TensorRT engine
    DIR/<name>/1/model.onnx.json   the artifact's heke sidecar, unchanged

One Triton model per exported precision, under names that never depend on what else was
exported: ``<stem>`` serves the FP16 artifact (what heke deploys) and ``<stem>_fp32`` the FP32
one, where ``<stem>`` is the artifact's file name before the precision (``r2p1d_HEKE_4``, or
``r2p1d_HEKE_4-tiny-demo``: demo weights say so everywhere, docs/ARCHITECTURE.md). With
TensorRT engines built the models are the engines, otherwise the ONNX graphs.

The sidecar travels into the version folder, so the heke runtime accepts the served file as
it is, and ``config.pbtxt`` repeats what a Triton client needs to prepare inputs (the
preprocessing spec, the head names) in its ``parameters`` map, which Triton returns from its
model-configuration API.

``config.pbtxt`` is written as text: the only compiled ``ModelConfig`` message ships with
``tritonclient``, which the export extra does not need. The tests parse the text with that
message.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx

from heke_export.errors import ExportError, OutputFolderError
from heke_export.onnx_export import Precision, artifact_name, prepare_output_folder
from heke_export.trt_build import Range, default_profile
from heke_ref.checkpoint import Weights
from heke_runtime.files import sha256_file
from heke_runtime.models import model_entry
from heke_runtime.sidecar import Sidecar, SidecarError, read_sidecar, sidecar_path

VERSION = "1"
MAIN_PRECISION = "fp16"  # served under the plain name; other precisions get a suffix
# Triton's platform and backend names for each artifact kind (both set, as Triton's own
# auto-completed configs do; they must agree).
PLATFORMS = {"onnx": ("onnxruntime_onnx", "onnxruntime"), "tensorrt": ("tensorrt_plan", "tensorrt")}
MODEL_FILES = {"onnx": "model.onnx", "tensorrt": "model.plan"}  # Triton's default file names
ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}
# How long Triton holds a request to batch it with others: small against one batch of clips
# (tens of milliseconds at least), long enough to merge requests that arrive together.
QUEUE_DELAY_US = 2000

Echo = Callable[[str], None]


class TritonRepositoryError(OutputFolderError):
    """A Triton model folder in the way: another model, other weights, or other versions."""


@dataclass(frozen=True)
class ModelIdentity:
    """What makes a Triton model folder "the same model": replacing it changes no answer
    but the engine build (a rebuilt plan, an ONNX graph swapped for its engine)."""

    model: str
    precision: str
    weights_sha256: str

    @classmethod
    def of(cls, sidecar: Sidecar) -> ModelIdentity:
        return cls(sidecar.model, sidecar.precision, sidecar.weights_sha256)

    def describe(self) -> str:
        return f"{self.model} {self.precision} from weights {self.weights_sha256[:12]}"


def triton_name(file_name: str, precision: str) -> str:
    """``r2p1d_HEKE_4.fp16.onnx`` -> ``r2p1d_HEKE_4``; ``….fp32.plan`` -> ``…_fp32``."""
    stem = file_name.split(".")[0]  # model names and their -tiny/-demo tags have no dot
    return stem if precision == MAIN_PRECISION else f"{stem}_{precision}"


def _refuse(folder: Path, reason: str) -> TritonRepositoryError:
    return TritonRepositoryError(
        f"Triton model folder {folder} {reason}; remove it or choose another --triton folder"
    )


def _served_sidecar(version: Path) -> Sidecar | None:
    for file in MODEL_FILES.values():
        if sidecar_path(version / file).is_file():
            return read_sidecar(version / file, check_hash=False)
    return None


def check_model_folder(folder: Path, identity: ModelIdentity) -> None:
    """Refuse to replace ``folder`` unless it holds the same model (:class:`ModelIdentity`).

    Other version folders are refused too: Triton serves the highest version by default, so
    a leftover ``2/`` would be served instead of this export.
    """
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not folder.is_dir():
        raise _refuse(folder, "exists and is not a folder")
    others = sorted(p.name for p in folder.iterdir() if p.name.isdigit() and p.name != VERSION)
    if others:
        raise _refuse(folder, f"holds model versions {', '.join(others)}, which Triton would serve")
    try:
        existing = _served_sidecar(folder / VERSION)
    except SidecarError as exc:
        raise _refuse(folder, f"has an unreadable heke sidecar ({exc})") from None
    if existing is None:
        raise _refuse(
            folder, f"exists and was not written by heke-export (no sidecar in {VERSION}/)"
        )
    if ModelIdentity.of(existing) != identity:
        old = ModelIdentity.of(existing).describe()
        raise _refuse(folder, f"holds {old}, not {identity.describe()}")


def check_triton_repository(repo: Path, weights: Weights, precisions: Iterable[Precision]) -> None:
    """Before exporting: refuse now what :func:`write_triton_repository` would refuse later."""
    prepare_output_folder(repo)
    for precision in precisions:
        name = triton_name(artifact_name(weights, precision), precision)
        check_model_folder(repo / name, ModelIdentity(weights.model, precision, weights.sha256))


def onnx_io_types(graph: Path) -> dict[str, str]:
    """Triton data types of a graph's inputs and outputs, read from the graph itself (the
    sidecar records names and dims; the engine I/O contract says float32)."""
    proto = onnx.load(str(graph), load_external_data=False)
    types = {}
    for value in [*proto.graph.input, *proto.graph.output]:
        elem = value.type.tensor_type.elem_type
        if elem not in ONNX_TYPES:
            name = onnx.TensorProto.DataType.Name(elem)
            raise ExportError(f"{graph.name}: {value.name} is {name}, not float32 or float16")
        types[value.name] = ONNX_TYPES[elem]
    return types


def batch_range(sidecar: Sidecar, onnx_batch: Range | None) -> Range:
    """(min, opt, max) batch: an engine's own profile, else ``onnx_batch`` or the default."""
    if sidecar.profiles:
        first = sidecar.profiles[0][next(iter(sidecar.inputs))]
        low, opt, high = (int(first[k][0]) for k in ("min", "opt", "max"))
        return low, opt, high
    return onnx_batch or default_profile(sidecar.model).batch


def dims_without_batch(name: str, dims: list[int | str]) -> list[int]:
    """``["B", 3, 8, "H", "W"]`` -> ``[3, 8, -1, -1]``: Triton's batch axis is implicit
    when ``max_batch_size > 0``, and -1 marks a dynamic dim."""
    if not dims or dims[0] != "B":
        raise ExportError(f"{name}: first dim of {dims} is not the batch axis B")
    return [d if isinstance(d, int) else -1 for d in dims[1:]]


def parameters(sidecar: Sidecar) -> dict[str, str]:
    """What a client needs beside the tensors, as strings (Triton parameters are strings);
    JSON where the value has structure. No weights path: repositories get shared."""
    values = {
        "heke_model": sidecar.model,
        "heke_kind": sidecar.kind,
        "heke_precision": sidecar.precision,
        "heke_artifact_sha256": sidecar.artifact_sha256,
        "heke_onnx_sha256": sidecar.onnx_sha256,
        "heke_weights_sha256": sidecar.weights_sha256,
        "heke_demo_weights": json.dumps(sidecar.demo_weights),
        "heke_tiny": json.dumps(sidecar.tiny),
        "heke_heads": json.dumps(list(model_entry(sidecar.model).heads)),
        "heke_preprocess": json.dumps(sidecar.preprocess.to_dict(), sort_keys=True),
        "heke_sidecar_format": sidecar.format,
    }
    if sidecar.tensorrt is not None:  # Triton's TensorRT must be this version to load the plan
        values["heke_tensorrt"] = json.dumps(sidecar.tensorrt, sort_keys=True)
    return values


def _quote(text: str) -> str:
    """A protobuf text-format string literal. JSON with ensure_ascii leaves only printable
    ASCII, so escaping the backslash and the quote is all that is needed; anything else is
    escaped as octal bytes, as protobuf's own writer does."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _tensors(
    field: str, dims: Mapping[str, list[int | str]], types: Mapping[str, str]
) -> list[str]:
    lines = [f"{field} ["]
    for index, (name, shape) in enumerate(dims.items()):
        if name not in types:
            raise ExportError(f"{name} is in the sidecar but not in the graph")
        values = ", ".join(str(d) for d in dims_without_batch(name, shape))
        lines += ["  {", f"    name: {_quote(name)}", f"    data_type: {types[name]}"]
        lines += [f"    dims: [ {values} ]", "  }" + ("," if index < len(dims) - 1 else "")]
    return [*lines, "]"]


def config_text(name: str, sidecar: Sidecar, types: Mapping[str, str], batch: Range) -> str:
    """``config.pbtxt`` for one artifact (protobuf text format of Triton's ``ModelConfig``)."""
    platform, backend = PLATFORMS[sidecar.kind]
    _, opt, high = batch
    lines = [
        f"name: {_quote(name)}",
        f"platform: {_quote(platform)}",
        f"backend: {_quote(backend)}",
        f"max_batch_size: {high}",
        *_tensors("input", sidecar.inputs, types),
        *_tensors("output", sidecar.outputs, types),
        "dynamic_batching {",
        f"  preferred_batch_size: [ {opt} ]",
        f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}",
        "}",
    ]
    for key, value in parameters(sidecar).items():
        lines += ["parameters {", f"  key: {_quote(key)}"]
        lines += [f"  value {{ string_value: {_quote(value)} }}", "}"]
    return "\n".join(lines) + "\n"


def _swap_in(stage: Path, folder: Path) -> None:
    """Put the staged model folder in place; an old one goes only once the new one is whole."""
    old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
    if folder.exists():
        folder.rename(old)
    stage.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def write_triton_model(
    repo: Path, artifact: Path, graph: Path, *, onnx_batch: Range | None = None
) -> Path:
    """Write ``repo/<name>/`` serving ``artifact`` (an ONNX graph or TensorRT plan; ``graph``
    is the ONNX graph it is or was built from). Returns the served file,
    ``repo/<name>/1/model.onnx`` or ``model.plan``."""
    sidecar = read_sidecar(artifact)  # checks the artifact against its sidecar
    if sidecar.onnx_sha256 != sha256_file(graph):
        raise ExportError(f"{artifact.name} was not built from {graph.name}")
    name = triton_name(artifact.name, sidecar.precision)
    folder = repo / name
    check_model_folder(folder, ModelIdentity.of(sidecar))
    text = config_text(name, sidecar, onnx_io_types(graph), batch_range(sidecar, onnx_batch))
    # Staged beside the final folder (same file system, so the rename is atomic): Triton
    # never sees a model folder without its file or config.
    stage = repo / f".{name}.{uuid.uuid4().hex[:8]}.part"
    try:
        (stage / VERSION).mkdir(parents=True)
        served = stage / VERSION / MODEL_FILES[sidecar.kind]
        shutil.copyfile(artifact, served)
        shutil.copyfile(sidecar_path(artifact), sidecar_path(served))
        (stage / "config.pbtxt").write_text(text)
        _swap_in(stage, folder)
    except OSError as exc:
        raise OutputFolderError(
            f"cannot write Triton model {folder}: {exc.strerror or exc}"
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already when all went well
    return folder / VERSION / served.name


def write_triton_repository(
    repo: Path,
    graphs: Mapping[str, Path],
    plans: Mapping[str, Path],
    *,
    onnx_batch: Range | None = None,
    echo: Echo = print,
) -> list[Path]:
    """One Triton model per precision: the TensorRT plans when any were built (what a GPU
    server runs), else the ONNX graphs. ``graphs`` and ``plans`` map precision to file,
    as :class:`heke_export.pipeline.ExportResult` holds them."""
    prepare_output_folder(repo)
    served = plans or graphs
    folders = []
    for precision, artifact in served.items():
        file = write_triton_model(repo, artifact, graphs[precision], onnx_batch=onnx_batch)
        echo(f"wrote Triton model {file.parent.parent} (serves {artifact.name} as {file.name})")
        folders.append(file.parent.parent)
    return folders
