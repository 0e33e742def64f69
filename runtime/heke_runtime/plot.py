"""Per-snippet quality timelines (``heke-run --plot FILE.png``); matplotlib is optional.

One panel per video: each snippet drawn across the seconds it covers, the ensemble as a
thick line, the four heads thin, and the regressor score when there is one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from heke_runtime.errors import HekeError
from heke_runtime.models import HEAD_NAMES
from heke_runtime.results import DEMO_NOTE, REGRESSOR_NAME, VideoResult

PLOT_EXTRA = "pip install 'heke[plot]'"
MAX_PANELS = 24


class PlotError(HekeError, RuntimeError):
    """The timeline picture cannot be drawn."""


def require_matplotlib() -> ModuleType:
    """Import matplotlib with a file-only backend, or say which extra provides it."""
    try:
        import matplotlib
    except ImportError:
        raise PlotError(f"--plot needs matplotlib; install the extra: {PLOT_EXTRA}") from None
    matplotlib.use("Agg")  # draw to files; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_timelines(
    results: Sequence[VideoResult], path: str | Path, *, max_panels: int = MAX_PANELS
) -> Path:
    """Draw the scored videos' timelines into ``path`` (PNG, or any format by suffix)."""
    plt = require_matplotlib()
    scored = [r for r in results if r.ok and r.snippets]
    if not scored:
        raise PlotError("no scored video to plot")
    shown = scored[:max_panels]
    cols = min(len(shown), 3)
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.2 * rows), squeeze=False)
    for ax, result in zip(axes.flat, shown):
        _panel(ax, result)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    fig.suptitle(_title(scored, shown), fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _title(scored: Sequence[VideoResult], shown: Sequence[VideoResult]) -> str:
    title = "HEKE per-snippet scores (higher = more distorted)"
    if len(shown) < len(scored):
        title += f" - first {len(shown)} of {len(scored)} videos"
    if any(r.demo_weights for r in shown):
        title += f"\n{DEMO_NOTE}"
    return title


def _panel(ax: Any, result: VideoResult) -> None:
    mids = [(s.start_s + s.end_s) / 2 for s in result.snippets]
    for name in HEAD_NAMES:
        ax.plot(mids, [s.scores[name] for s in result.snippets], lw=0.8, alpha=0.7, label=name)
    ensemble = [s.scores["ensemble"] for s in result.snippets]
    ax.plot(mids, ensemble, color="black", lw=2.0, marker="o", ms=3, label="ensemble")
    for snippet, value in zip(result.snippets, ensemble):  # the span each snippet covers
        ax.hlines(value, snippet.start_s, snippet.end_s, color="black", lw=2, alpha=0.15)
    if REGRESSOR_NAME in result.scores:
        values = [s.scores.get(REGRESSOR_NAME, math.nan) for s in result.snippets]
        ax.plot(mids, values, color="crimson", lw=1.6, ls="--", label=REGRESSOR_NAME)
    mean, spread = result.scores.get("ensemble", math.nan), result.spread.get("ensemble", 0.0)
    ax.set_title(f"{Path(result.path).name}: {mean:.3f} ± {spread:.3f}", fontsize=9)
    if result.video is not None and result.video.duration_s > 0:
        ax.set_xlim(0, result.video.duration_s)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
