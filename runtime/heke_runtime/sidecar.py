"""JSON sidecars: what an ONNX graph or TensorRT engine holds, written beside it.

``model.onnx`` -> ``model.onnx.json``. The runtime refuses an artifact whose sidecar is
missing or does not match it (different sha256, wrong model, unknown format), with the reason.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heke_runtime.errors import HekeError
from heke_runtime.files import atomic_write_bytes, sha256_file
from heke_runtime.spec import PreprocessSpec

FORMAT = "heke-sidecar/1"


class SidecarError(HekeError, ValueError):
    """A sidecar is missing, unreadable, or does not match its artifact."""


@dataclass(frozen=True)
class Sidecar:
    """Everything the runtime needs to know about an artifact without opening it."""

    model: str
    kind: str  # "onnx" or "tensorrt"
    precision: str  # "fp32", "fp16" or "int8"
    artifact_sha256: str
    onnx_sha256: str
    weights_sha256: str
    weights_source: str
    demo_weights: bool
    preprocess: PreprocessSpec
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    tiny: bool = False
    profiles: list[dict[str, Any]] = field(default_factory=list)
    tensorrt: dict[str, Any] | None = None
    # int8 graphs: calibration set (paths, content hash), method, the FP32 graph's sha256,
    # the nodes kept in FP32 (heke_export.int8)
    quantization: dict[str, Any] | None = None
    created: str = ""
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sidecar:
        if data.get("format") != FORMAT:
            raise SidecarError(f"unknown sidecar format {data.get('format')!r}; need {FORMAT}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names - set(data) if n not in _OPTIONAL)
        if missing:
            raise SidecarError(f"sidecar lacks fields: {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in names}
        values["preprocess"] = PreprocessSpec.from_dict(data["preprocess"])
        return cls(**values)


_OPTIONAL = {"tiny", "profiles", "tensorrt", "quantization", "created", "format"}


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")


def write_sidecar(artifact: Path, sidecar: Sidecar) -> Path:
    path = sidecar_path(artifact)
    text = json.dumps(sidecar.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode())
    return path


def read_sidecar(artifact: Path, *, check_hash: bool = True) -> Sidecar:
    """Read and validate the sidecar of ``artifact``; raise :class:`SidecarError` on mismatch."""
    path = sidecar_path(artifact)
    if not path.is_file():
        raise SidecarError(
            f"{artifact}: no sidecar {path.name} beside it (re-export with heke-export)"
        )
    try:
        sidecar = Sidecar.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        if isinstance(exc, SidecarError):
            raise SidecarError(f"{path}: {exc}") from None
        raise SidecarError(f"{path}: unreadable sidecar ({exc})") from None
    if check_hash:
        actual = sha256_file(artifact)
        if actual != sidecar.artifact_sha256:
            raise SidecarError(
                f"{artifact}: sidecar does not match the file (sha256 {actual[:12]} on disk, "
                f"{sidecar.artifact_sha256[:12]} in {path.name})"
            )
    return sidecar
