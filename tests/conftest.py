"""Shared test setup: the reference data location, the GPU marker policy, and the record
schema every heke-run record a test writes must follow.

GPU/TensorRT tests carry ``@pytest.mark.gpu``; they skip with a reason on machines without
CUDA, unless ``HEKE_REQUIRE_GPU=1`` (set by ``benchmarks/gpu_check.sh``), which turns every
such skip into a failure so a GPU run cannot pass by skipping. A GPU test that needs a module
besides torch (cuda-bindings, TensorRT) takes it through :func:`require`, under the same policy.

After each test that used ``tmp_path``, every heke-run record in a ``.jsonl`` file there is
validated against ``runtime/heke_runtime/record.schema.json`` (:func:`check_record`), so a
field that drifts from the published schema fails the test that wrote it. (jsonschema comes
with the dev extra; on the GPU image, which lacks it, only the GPU tests run.)
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

try:
    import jsonschema
except ImportError:  # the GPU image gpu_check.sh runs on has none; CI has it (the dev extra)
    jsonschema = None

from heke_runtime.results import json_lines, record_schema_text

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


@functools.cache
def _record_validator() -> Any:
    schema = json.loads(record_schema_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def check_record(record: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``record`` follows the record schema."""
    _record_validator().validate(record)


def _heke_run_records(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in folder.rglob("*.jsonl"):
        for record in json_lines(path.read_text()):  # skips torn lines resume tests write
            if "schema_version" in record and "path" in record:
                yield path, record


@pytest.fixture(autouse=True)
def _records_follow_the_schema(request: pytest.FixtureRequest) -> Iterator[None]:
    # Taken before the test, so tmp_path is torn down after this check, not before.
    used = "tmp_path" in request.fixturenames and jsonschema is not None
    folder = request.getfixturevalue("tmp_path") if used else None
    yield
    if folder is None:
        return
    for path, record in _heke_run_records(folder):
        try:
            check_record(record)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{path.name}: a record breaks record.schema.json: {exc.message}")
