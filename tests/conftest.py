"""Shared test setup: the reference data location and the GPU marker policy.

GPU/TensorRT tests carry ``@pytest.mark.gpu``; they skip with a reason on machines without
CUDA, unless ``HEKE_REQUIRE_GPU=1`` (set by ``benchmarks/gpu_check.sh``), which turns every
such skip into a failure so a GPU run cannot pass by skipping. A GPU test that needs a module
besides torch (cuda-bindings, TensorRT) takes it through :func:`require`, under the same policy.
"""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"


def gpu_required() -> bool:
    return os.environ.get("HEKE_REQUIRE_GPU") == "1"


@functools.cache
def _cuda_available() -> bool:
    """A CUDA device seen by torch, or by cuda-python when torch is a CPU build."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return False
    error, count = cudart.cudaGetDeviceCount()
    return error == cudart.cudaError_t.cudaSuccess and count > 0


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "gpu" not in item.keywords or _cuda_available():
        return
    if gpu_required():
        pytest.fail("HEKE_REQUIRE_GPU=1 but no CUDA GPU is available to this test")
    pytest.skip("needs a CUDA GPU (HEKE_REQUIRE_GPU=1 makes this a failure instead)")


def require(module: str, why: str) -> ModuleType:
    """``module``, imported for a test that cannot run without it. Missing: the test skips
    with the reason, or fails naming the module under ``HEKE_REQUIRE_GPU=1``, as a missing
    GPU does (``pytest.importorskip`` would skip even there)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = f"{module} is missing ({exc}); {why}"
    if gpu_required():
        pytest.fail(f"HEKE_REQUIRE_GPU=1 but {missing}")
    pytest.skip(missing)


def reference_file(name: str) -> Path:
    """A file of ../shared/reference; skip (with the reason) only when the folder is absent."""
    path = REFERENCE_DIR / name
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DIR} (the authors' outputs)")
    if not path.is_file():
        pytest.fail(f"reference folder exists but {name} is missing from it")
    return path
