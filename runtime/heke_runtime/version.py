"""heke's version, from one place: ``pyproject.toml``'s ``[project] version``, read from the
installed package's metadata. A pure helper (no I/O policy, no typer), so ``heke_ref`` may
use it too."""

from __future__ import annotations

import importlib.metadata


def heke_version() -> str:
    """The installed heke's version, e.g. ``"0.1.0"``; every command's ``--version`` prints it."""
    try:
        return importlib.metadata.version("heke")
    except importlib.metadata.PackageNotFoundError:  # package folders on the path, not installed
        return "unknown (heke is not installed: pip install -e .)"
