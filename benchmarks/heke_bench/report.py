"""The throughput targets (benchmarks/RESULTS.md), the printed summary and the PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Dense FP16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets.
FP16_PEAK_TFLOPS = {
    "H100 80GB HBM3": 989.4,
    "H100 SXM": 989.4,
    "H100 PCIe": 756.0,
    "H200": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}


def fp16_peak(gpu_name: str) -> float | None:
    for key, peak in FP16_PEAK_TFLOPS.items():
        if key in gpu_name:
            return peak
    return None


def _target(
    name: str, value: float | None, goal: str, ok: bool | None, note: str = ""
) -> dict[str, Any]:
    verdict = "n/a" if ok is None else ("MET" if ok else "MISSED")
    return {"target": name, "value": value, "goal": goal, "verdict": verdict, "note": note}


def _model(figures: dict[str, Any], label: str) -> dict[str, Any] | None:
    return next((m for m in figures.get("model", []) if m["label"] == label), None)


def _int8_target(figures: dict[str, Any], ort: dict[str, Any] | None) -> list[dict[str, Any]]:
    """INT8 Q/DQ graph vs ORT FP32, when ``onnxruntime-cpu int8`` was measured."""
    int8 = _model(figures, "onnxruntime-cpu int8")
    if not (int8 and ort):
        return []
    ratio = int8["clips_per_s"] / ort["clips_per_s"]
    exact = int8["parity"]["passed"]
    note = "" if exact else f"parity FAILED: heads off by {int8['parity']['max_abs']:.3g}"
    return [_target("INT8 / ORT FP32 clips/s", ratio, ">= 2.5", ratio >= 2.5 and exact, note)]


def cpu_targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    ort, bf16 = _model(figures, "onnxruntime-cpu fp32"), _model(figures, "torch-cpu bf16")
    # The roofline timed in the same interleaved rounds as the model, else the standalone one.
    sgemm = (figures.get("sgemm_model_rounds") or figures.get("sgemm") or {}).get("gflops")
    if ort and sgemm:
        share = ort["gflops"] / sgemm
        rows.append(_target("ORT FP32 GFLOP/s / sgemm GFLOP/s", share, ">= 0.85", share >= 0.85))
    if bf16 and ort:
        ratio = bf16["clips_per_s"] / ort["clips_per_s"]
        exact = bf16["parity"]["passed"]
        note = "" if exact else f"parity FAILED: heads off by {bf16['parity']['max_abs']:.3g}"
        rows.append(
            _target(
                "BF16 / ORT FP32 clips/s",
                ratio,
                ">= 1.7 within FP16 tolerance",
                ratio >= 1.7 and exact,
                note,
            )
        )
    elif ort:
        rows.append(
            _target(
                "BF16 / ORT FP32 clips/s",
                None,
                ">= 1.7",
                None,
                "this CPU has no AVX-512 BF16/AMX (or bf16 not measured)",
            )
        )
    rows += _int8_target(figures, ort)
    e2e = figures.get("end_to_end")
    if e2e:
        ratio = e2e["e2e_over_model"]
        rows.append(_target("end-to-end time / model-only time", ratio, "<= 1.10", ratio <= 1.10))
    return rows + _seek_target(figures)


def _seek_target(figures: dict[str, Any]) -> list[dict[str, Any]]:
    seek = figures.get("seek")
    if not seek:
        return []
    long_enough = seek["duration_s"] >= 590
    note = "" if long_enough else f"video is {seek['duration_s']:.0f} s, the target names 10 min"
    return [
        _target(
            "seek speedup (sampled frames, identical)",
            seek["speedup"],
            ">= 4",
            seek["speedup"] >= 4,
            note,
        )
    ]


def gpu_targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    half, full = _model(figures, "torch-cuda fp16"), _model(figures, "torch-cuda fp32")
    if half and full:
        ratio = half["clips_per_s"] / full["clips_per_s"]
        rows.append(_target("CUDA FP16 / FP32 clips/s", ratio, ">= 2.5", ratio >= 2.5))
    gpu = figures["system"].get("gpu") or {}
    peak = fp16_peak(gpu.get("name", ""))
    if half:
        share = half["gflops"] / 1000 / peak if peak else None
        rows.append(
            _target(
                "model-only / dense FP16 peak",
                share,
                ">= 0.30",
                None if share is None else share >= 0.30,
                f"peak {peak} TFLOP/s" if peak else "unknown GPU peak",
            )
        )
    e2e, dec = figures.get("end_to_end"), figures.get("decode_only")
    if e2e and dec:
        ratio = e2e["videos_per_s"] / dec["videos_per_s"]
        rows.append(_target("end-to-end / decode-only videos/s", ratio, ">= 0.90", ratio >= 0.90))
    return rows + _seek_target(figures)


def summary_lines(figures: dict[str, Any]) -> list[str]:
    lines = []
    for m in figures.get("model", []):
        lines.append(
            f"model  {m['label']:<22} batch {m['batch']:>2}: {m['clips_per_s']:8.3f} clips/s "
            f"({m['s_per_clip']:.3f} s/clip), {m['gflops']:9.1f} GFLOP/s  [{m['parity']['line']}]"
        )
    for row in figures.get("targets", []):
        value = "-" if row["value"] is None else f"{row['value']:.3f}"
        note = f"  ({row['note']})" if row["note"] else ""
        lines.append(f"target {row['target']}: {value} (goal {row['goal']}) {row['verdict']}{note}")
    return lines


def chart(figures: dict[str, Any], path: Path) -> Path:
    """Model clips/s, GFLOP/s against the sgemm roofline, and the pipeline's stages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.5))
    models = figures.get("model", [])
    labels = [m["label"] for m in models]
    left.barh(labels, [m["clips_per_s"] for m in models], color="tab:blue")
    left.set_xlabel("clips/s (model only)")
    middle.barh(labels, [m["gflops"] for m in models], color="tab:green")
    roofline = figures.get("sgemm_model_rounds") or figures.get("sgemm")
    if roofline:
        middle.axvline(roofline["gflops"], color="k", ls="--", label="sgemm (CPU roofline)")
        middle.legend(loc="lower right")
    middle.set_xlabel("achieved GFLOP/s")
    stages = _stage_bars(figures)
    right.barh(list(stages), list(stages.values()), color="tab:orange")
    right.set_xlabel("videos/s")
    shape = figures.get("config", {}).get("input", "")
    fig.suptitle(
        f"heke-bench {shape} on {figures['system']['cpu'].get('name', '?')}"
        + (f" + {figures['system']['gpu']['name']}" if figures["system"].get("gpu") else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _stage_bars(figures: dict[str, Any]) -> dict[str, float]:
    bars = {}
    if figures.get("decode_only"):
        bars["decode only"] = figures["decode_only"]["videos_per_s"]
    if figures.get("end_to_end"):
        e2e = figures["end_to_end"]
        bars["end to end"] = e2e["videos_per_s"]
        bars["model only"] = e2e["videos"] / e2e["model_only_s"]
    return bars
