"""What the benchmark ran on: versions, CPU and GPU names, clocks, load."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

# onnxruntime or onnxruntime-gpu: heke[cpu] installs the one, heke[gpu] the other ("-": absent)
PACKAGES = (
    "numpy",
    "av",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch",
    "tensorrt",
    "cuda-bindings",
    "heke",
)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def cpu() -> dict[str, Any]:
    """Model name, logical CPUs, flags that matter here, current and max clocks."""
    info: dict[str, Any] = {"logical_cpus": os.cpu_count(), "machine": platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    mhz = [float(v.split(":")[1]) for v in text.splitlines() if v.startswith("cpu MHz")]
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "f16c")
    info.update(
        name=fields.get("model name", "?"),
        flags=[f for f in wanted if f in flags],
        mhz_now=round(sum(mhz) / len(mhz)) if mhz else None,
        mhz_max=_max_mhz(),
        load_average=[round(x, 2) for x in os.getloadavg()],
    )
    return info


def _max_mhz() -> int | None:
    path = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(path.read_text()) // 1000
    except (OSError, ValueError):
        return None


def gpu() -> dict[str, Any] | None:
    """Name, memory, SMs and clocks of GPU 0 (torch and nvidia-smi), or None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "compute_capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
    }
    info.update(_smi())
    return info


def _smi() -> dict[str, str]:
    if shutil.which("nvidia-smi") is None:
        return {}
    query = "clocks.sm,clocks.max.sm,clocks.mem,driver_version,power.limit"
    done = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    values = [v.strip() for v in done.stdout.splitlines()[0].split(",")] if done.stdout else []
    return dict(zip(query.split(","), values))


def describe() -> dict[str, Any]:
    return {"versions": versions(), "cpu": cpu(), "gpu": gpu()}
