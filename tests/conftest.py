"""Shared test setup: the reference data location and the GPU marker policy.

GPU/TensorRT tests carry ``@pytest.mark.gpu``; they skip with a reason on machines without
CUDA, unless ``HEKE_REQUIRE_GPU=1`` (set by ``benchmarks/gpu_check.sh``), which turns every
such skip into a failure so a GPU run cannot pass by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"


def gpu_required() -> bool:
    return os.environ.get("HEKE_REQUIRE_GPU") == "1"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "gpu" not in item.keywords or _cuda_available():
        return
    if gpu_required():
        pytest.fail("HEKE_REQUIRE_GPU=1 but no CUDA GPU is available to this test")
    pytest.skip("needs a CUDA GPU (HEKE_REQUIRE_GPU=1 makes this a failure instead)")


def reference_file(name: str) -> Path:
    """A file of ../shared/reference; skip (with the reason) only when the folder is absent."""
    path = REFERENCE_DIR / name
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DIR} (the authors' outputs)")
    if not path.is_file():
        pytest.fail(f"reference folder exists but {name} is missing from it")
    return path
