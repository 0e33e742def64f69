"""JSON sidecars: what an ONNX graph or TensorRT engine holds, written beside it.

``model.onnx`` -> ``model.onnx.json``. The runtime refuses an artifact whose sidecar is
missing or does not match it (different sha256, wrong model, unknown format), with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from heke_runtime.errors import HekeError
from heke_runtime.spec import PreprocessSpec

FORMAT = "heke-sidecar/1"


class SidecarError(HekeError, ValueError):
    """A sidecar is missing, unreadable, or does not match its artifact."""


@dataclass(frozen=True)
class Sidecar:
    """Everything the runtime needs to know about an artifact without opening it."""

    model: str
    kind: str  # "onnx" or "tensorrt"
    precision: str  # "fp32" or "fp16"
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


_OPTIONAL = {"tiny", "profiles", "tensorrt", "created", "format"}


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        # mkstemp creates 0600; give the file the mode a plain open() would (umask applies).
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_npz(path: Path, arrays: dict[str, Any]) -> None:
    """``arrays`` as an ``.npz``, written atomically (readers never see half a file)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def read_npz(
    path: Path, error: type[HekeError], what: str, kind: str | None = None
) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, never unpickling; ``error`` says why one cannot be read:
    "no such <what> file", or "not a <kind> .npz" (``kind`` defaults to ``what``)."""
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.array(data[k]) for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise error(f"{path}: not a {kind or what} .npz ({exc})") from None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
