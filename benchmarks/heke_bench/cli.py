"""``heke-bench``: every stage measured alone (after its outputs are checked), then the
pipeline end to end; figures printed, written as JSON, and drawn as a PNG.

Stages: ``sgemm`` (NumPy float32 matrix product: the CPU roofline of this run), ``decode``
(frames/s, with and without RGB conversion), ``preprocess`` (frames/s), ``model`` (clips/s and
GFLOP/s per backend and precision, FLOPs counted by torch per input shape), ``e2e`` (videos/s
and peak RSS of scoring generated videos, against the same clips through the model alone),
``decode-only`` (videos/s of the pipeline with no model, all cores decoding) and ``seek``
(sampling a long H.264 video with seeks against full sequential decoding).

Weights: the demo weights unless ``--checkpoint`` names an authors'-format checkpoint (e.g. the
shared reference weights written by ``benchmarks/reference_checkpoint.py``). Speed does not
depend on the weights; the BF16 accuracy check does, and the full-size demo weights are
badly conditioned (benchmarks/RESULTS.md), so accuracy figures should come from a checkpoint.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from heke_bench import endtoend, inputs, measure, report, system
from heke_runtime.cli_common import new_app
from heke_runtime.errors import HekeError
from heke_runtime.pipeline import default_workers

if TYPE_CHECKING:
    from heke_export.onnx_export import Precision

PROG = "heke-bench"
STAGES = ("sgemm", "decode", "preprocess", "model", "e2e", "decode-only", "seek")
app = new_app(__doc__)


@dataclass(frozen=True)
class Config:
    model: str
    tiny: bool
    height: int
    width: int
    batch: int
    videos: int
    frames: int
    long_seconds: int
    min_time: float
    workdir: Path
    gpu: bool
    engine: str  # demo spelling or checkpoint path: the weights every backend runs

    @property
    def source(self) -> tuple[int, int]:
        return inputs.source_size(self.height, self.width)


def default_labels(gpu: bool) -> list[str]:
    if gpu:
        return ["torch-cuda fp32", "torch-cuda fp16"]
    from heke_export.torch_backend import cpu_bf16_support

    bf16 = ["torch-cpu bf16"] if cpu_bf16_support() else []
    return ["onnxruntime-cpu fp32", *bf16, "torch-cpu fp32"]


def backend_spec(label: str, config: Config, plan: Path | None) -> measure.BackendSpec:
    backend, _, precision = label.partition(" ")
    if backend == "onnxruntime-cpu" and precision in ("", "fp32", "int8"):
        wanted: Precision = "int8" if precision == "int8" else "fp32"
        engine = inputs.onnx_engine(config.workdir, config.engine, wanted)
        return measure.BackendSpec(label, str(engine), backend, wanted, {})
    if backend in ("torch-cpu", "torch-cuda"):
        return measure.BackendSpec(
            label, config.engine, backend, precision, {"precision": precision}
        )
    if backend == "tensorrt" and plan is not None:
        return measure.BackendSpec(label, str(plan), backend, precision or "fp16", {})
    valid = (
        "onnxruntime-cpu fp32|int8, torch-cpu fp32|bf16, torch-cuda fp32|fp16, tensorrt (--plan)"
    )
    raise inputs.BenchError(f"unknown backend label {label!r}; valid: {valid}")


def say(text: str) -> None:
    typer.echo(f"{PROG}: {text}")


def run_stages(
    config: Config,
    stages: list[str],
    specs: list[measure.BackendSpec],
    e2e_spec: measure.BackendSpec,
) -> dict[str, Any]:
    figures: dict[str, Any] = {"system": system.describe()}
    say(json.dumps(figures["system"]))
    folder = config.workdir
    short = inputs.pattern_video(folder, config.source, config.frames)
    if "sgemm" in stages:
        figures["sgemm"] = measure.sgemm(min_time=min(config.min_time, 3.0))
        say(f"sgemm {figures['sgemm']['n']}^3 float32: {figures['sgemm']['gflops']:.1f} GFLOP/s")
    if "decode" in stages:
        figures["decode"] = measure.decode_fps(short, config.min_time)
        say(f"decode {json.dumps(figures['decode'])}")
    if "preprocess" in stages:
        figures["preprocess"] = measure.preprocess_fps(short, config.min_time)
        say(f"preprocess {json.dumps(figures['preprocess'])}")
    if "model" in stages:
        stage = model_stage(config, specs)
        figures["model"], figures["sgemm_model_rounds"] = stage["rows"], stage["sgemm_same_rounds"]
    batch_videos = [
        inputs.pattern_video(folder, config.source, config.frames + i) for i in range(config.videos)
    ]
    if "decode-only" in stages:
        figures["decode_only"] = endtoend.decode_only(batch_videos, config.model, default_workers())
        say(f"decode-only {json.dumps(figures['decode_only'])}")
    if "e2e" in stages:
        figures["end_to_end"] = e2e_stage(config, e2e_spec, batch_videos)
    if "seek" in stages and config.long_seconds > 0:
        figures["seek"] = seek_stage(config)
    return figures


def model_stage(config: Config, specs: list[measure.BackendSpec]) -> dict[str, Any]:
    gflop = measure.model_gflop(config.model, config.tiny, config.height, config.width)
    say(
        f"model {config.model}{' (tiny)' if config.tiny else ''} {config.height}x{config.width}: "
        f"{gflop:.2f} GFLOP per clip"
    )
    check = inputs.frame_like(config.model, 1, config.height, config.width)
    expected = measure.reference_outputs(inputs.load_weights(config.engine), check)
    shape = (config.model, config.batch, config.height, config.width)
    rows, roofline = measure.model_throughputs(
        specs, (check, expected), shape, gflop, config.min_time
    )
    for row in rows:
        row["gflop_per_clip"] = gflop
        say(
            f"model {row['label']}: {row['clips_per_s']:.3f} clips/s, {row['gflops']:.1f} GFLOP/s "
            f"on {row['device']} [{row['parity']['line']}]"
        )
    say(f"sgemm in the same rounds: {roofline['gflops']:.1f} GFLOP/s")
    return {"rows": rows, "sgemm_same_rounds": roofline}


def e2e_stage(config: Config, spec: measure.BackendSpec, videos: list[Path]) -> dict[str, Any]:
    child = {
        "engine": spec.engine,
        "backend": spec.backend,
        "options": spec.options,
        "batch": config.batch,
        "workers": default_workers(),
        "videos": [str(v) for v in videos],
    }
    result = endtoend.run_child(child)
    result["label"] = spec.label
    say(f"end-to-end {json.dumps(result)}")
    return result


def seek_stage(config: Config) -> dict[str, Any]:
    fps = 25
    long_video = inputs.pattern_video(config.workdir, (1280, 720), config.long_seconds * fps, fps)
    result = measure.seek_vs_sequential(long_video)
    say(f"seek {json.dumps(result)}")
    return result


def _gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="Folder for bench.json and bench.png.")] = Path(
        "bench-out"
    ),
    workdir: Annotated[
        Path | None,
        typer.Option(help="Cache of generated videos and engines. Default: <tmp>/heke-bench."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny model, small inputs: a smoke run in seconds.")
    ] = False,
    backends: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated labels, e.g. 'onnxruntime-cpu fp32,torch-cpu bf16'. "
            "Default: the machine's."
        ),
    ] = None,
    e2e_backend: Annotated[
        str | None,
        typer.Option(
            help="Label for end to end. Default: onnxruntime-cpu fp32 (CPU), torch-cuda fp16 (GPU)."
        ),
    ] = None,
    plan: Annotated[
        Path | None, typer.Option(help="A TensorRT plan to measure as 'tensorrt'.")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="An authors'-format r2p1d checkpoint every backend runs (and the accuracy "
            "checks use). Default: the demo weights."
        ),
    ] = None,
    height: Annotated[
        int, typer.Option(help="Model input height (216: 432p video at scale 2).")
    ] = 216,
    width: Annotated[int, typer.Option(help="Model input width.")] = 384,
    batch: Annotated[
        int | None, typer.Option(min=1, help="Clips per call. Default: 2 (CPU), 16 (GPU).")
    ] = None,
    videos: Annotated[
        int | None, typer.Option(min=1, help="End-to-end videos. Default: 3 (CPU), 32 (GPU).")
    ] = None,
    frames: Annotated[int, typer.Option(min=30, help="Frames per end-to-end video.")] = 250,
    long_seconds: Annotated[
        int, typer.Option(min=0, help="Length of the 720p seek video; 0 skips it.")
    ] = 600,
    min_time: Annotated[float, typer.Option(help="Seconds each timing runs at least.")] = 10.0,
    stages: Annotated[
        str, typer.Option(help=f"Comma-separated subset of {', '.join(STAGES)}.")
    ] = ",".join(STAGES),
) -> None:
    """Measure, print every figure, write bench.json and bench.png."""
    gpu = _gpu_available()
    if checkpoint is not None and quick:
        raise inputs.BenchError("--checkpoint runs the full-size model; drop --quick")
    config = Config(
        model="r2p1d_HEKE_4",
        tiny=quick,
        height=54 if quick else height,
        width=96 if quick else width,
        batch=batch or (16 if gpu else 2),
        videos=videos or (2 if quick else (32 if gpu else 3)),
        frames=60 if quick else frames,
        long_seconds=min(long_seconds, 20) if quick else long_seconds,
        min_time=0.2 if quick else min_time,
        workdir=workdir or Path(tempfile.gettempdir()) / "heke-bench",
        gpu=gpu,
        engine=str(checkpoint) if checkpoint else inputs.demo_spec("r2p1d_HEKE_4", quick),
    )
    chosen = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown:
        raise inputs.BenchError(f"unknown stages {unknown}; valid: {', '.join(STAGES)}")
    config.workdir.mkdir(parents=True, exist_ok=True)
    labels = (
        backends.split(",") if backends else default_labels(gpu) + (["tensorrt"] if plan else [])
    )
    specs = [backend_spec(label.strip(), config, plan) for label in labels]
    e2e = backend_spec(
        e2e_backend or ("torch-cuda fp16" if gpu else "onnxruntime-cpu fp32"), config, plan
    )
    started = time.perf_counter()
    figures = run_stages(config, chosen, specs, e2e)
    figures["config"] = {
        "input": f"{config.height}x{config.width}",
        "batch": config.batch,
        "videos": config.videos,
        "frames": config.frames,
        "tiny": config.tiny,
        "weights": inputs.load_weights(config.engine).describe(),
        "workers": default_workers(),
        "min_time_s": config.min_time,
        "total_s": round(time.perf_counter() - started, 1),
        "load_average_end": system.cpu().get("load_average"),
    }
    figures["targets"] = report.gpu_targets(figures) if gpu else report.cpu_targets(figures)
    write(figures, out)


def write(figures: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    for line in report.summary_lines(figures):
        typer.echo(line)
    try:
        picture = report.chart(figures, out / "bench.png")
    except ImportError:
        say("no chart: matplotlib is not installed (pip install 'heke[plot]')")
    else:
        say(f"wrote {out / 'bench.json'} and {picture}")


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, prog_name=PROG, standalone_mode=False)
    except HekeError as exc:
        typer.echo(f"{PROG}: error: {exc}", err=True)
        return 1
    except typer.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:  # click usage errors in standalone_mode=False
        if hasattr(exc, "show"):
            exc.show()
            return 2
        raise
    return 0
