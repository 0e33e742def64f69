"""Make heke importable from a checkout without building it, for ``gpu_check.sh``.

Usage: ``python benchmarks/gpu_check_site.py SITE`` from the repository root, with SITE and
the package folders (``runtime``, ``export``, ``corpus``, ``finetune``, ``benchmarks`` and the
root) already on PYTHONPATH. It writes a dist-info into SITE carrying pyproject's scripts and
entry points (the torch backend joins the runtime's table through ``heke.backends``), then
imports every package and dependency, prints where each came from, and fails when a heke
package comes from outside this checkout or a backend is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import tomllib

MODULES = (
    "numpy",
    "av",
    "torch",
    "onnx",
    "onnxruntime",
    "typer",
    "pytest",
    "heke_runtime",
    "heke_ref",
    "heke_export",
    "heke_corpus",
    "heke_finetune",
    "heke_bench",
)
# Modules some GPU tests take through tests/conftest.py's require (they fail there, naming
# the module, when absent): listed here so the log says up front which are present.
OPTIONAL = ("cuda.bindings", "tensorrt")


def write_dist_info(site: Path, repo: Path) -> Path:
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    info = site / f"heke-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    metadata = f"Metadata-Version: 2.1\nName: heke\nVersion: {project['version']}\n"
    (info / "METADATA").write_text(metadata)
    groups = {"console_scripts": project["scripts"], **project.get("entry-points", {})}
    sections = []
    for group, points in groups.items():
        lines = "".join(f"{name} = {target}\n" for name, target in points.items())
        sections.append(f"[{group}]\n{lines}")
    (info / "entry_points.txt").write_text("\n".join(sections))
    return info


def present(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it; a missing parent: no)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def check_imports(repo: Path) -> None:
    for name in MODULES:
        module = importlib.import_module(name)
        where = getattr(module, "__file__", "") or ""
        print(f"{name:14s} {getattr(module, '__version__', ''):12s} {where}")
        if name.startswith("heke_") and not Path(where).resolve().is_relative_to(repo):
            sys.exit(f"{name} was imported from outside this checkout: {where}")
    for name in OPTIONAL:
        print(f"{name:14s} {'present' if present(name) else 'absent (its GPU tests will fail)'}")
    from heke_runtime.backends import BACKENDS

    print("backends:", ", ".join(BACKENDS))
    if "torch" not in BACKENDS:
        sys.exit("the torch backend's entry point (heke.backends) is not visible")
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    print("cuda available:", torch.cuda.is_available(), name)


def main() -> None:
    repo = Path.cwd().resolve()
    print("dist-info:", write_dist_info(Path(sys.argv[1]), repo))
    check_imports(repo)


if __name__ == "__main__":
    main()
