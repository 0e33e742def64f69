"""Files and hashes every package shares: sha256 of a file, atomic writes, ``.npz`` I/O.

Pure helpers (NumPy and the standard library), so ``heke_ref`` may use them too
(docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from heke_runtime.errors import HekeError


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
