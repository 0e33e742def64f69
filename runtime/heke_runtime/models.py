"""One entry per model: what every package needs to know about it, without torch.

Sampling, preprocessing, engine I/O, the regressor's feature layout, export tracing,
checkpoint recognition and verification read these entries instead of branching on a model
name (as timm keeps one config per model). The reference (``heke_ref.registry``) adds the
torch modules that build each model, keyed by the same names (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from heke_runtime.errors import UnknownModelError

# What the four heads imitate, in the order of the authors' training loss
# (docs/ARCHITECTURE.md, "Models").
HEAD_NAMES: tuple[str, ...] = ("gmsd", "st_gmsd", "st_rred", "ms_ssim")
POOLINGS: tuple[str, ...] = ("mean", "max", "std")  # per-channel statistics of every stage

PlanKind = Literal["snippets", "pairs"]
Dims = tuple[int | str, ...]


@dataclass(frozen=True)
class ModelEntry:
    """Facts about one model.

    ``plan``: ``"snippets"`` feeds ``[B, 3, N, H, W]`` clips of ``N`` frames taken every
    ``ts`` frames; ``"pairs"`` feeds frame ``pos_i`` and its difference with ``pos_i + ts``
    (:mod:`heke_runtime.sampling`). ``frame_dims`` are each input's dims after the batch
    axis (``H``/``W`` dynamic). ``stages`` name the feature stages in ``features`` order,
    ``stage_ratios`` their channel widths in units of ``channel_unit`` channels at full size
    (a tiny configuration keeps the ratios with a smaller unit); every stage contributes
    ``[mean, max, std]`` per channel. ``grouped`` stages are regrouped into four channel
    groups by the authors' regressor. ``backbones`` are the reference module's submodules
    that return stage maps (what FP16 export runs in float16); ``checkpoint_prefix`` is a
    state-dict key prefix only this model's checkpoints carry.
    """

    name: str
    inputs: tuple[str, ...]
    frame_dims: Dims
    plan: PlanKind
    num_snippets: int
    frames_per_snippet: int
    stages: tuple[str, ...]
    stage_ratios: tuple[int, ...]
    channel_unit: int
    grouped: tuple[str, ...]
    backbones: tuple[str, ...]
    checkpoint_prefix: str
    trace_size: tuple[int, int]  # height, width of the small tracing input
    heads: tuple[str, ...] = HEAD_NAMES

    def input_dims(self) -> dict[str, list[int | str]]:
        """Each input's dims with the dynamic batch ``B`` first (the engine I/O contract)."""
        return {name: ["B", *self.frame_dims] for name in self.inputs}

    def input_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """One input's concrete shape for a batch of ``height x width`` frames."""
        sizes = {"H": height, "W": width}
        return (batch, *(sizes[d] if isinstance(d, str) else d for d in self.frame_dims))

    def output_dims(self, feature_dim: int | None = None) -> dict[str, list[int | str]]:
        """``heads [B,4]`` and ``features [B,D]`` (``D`` full-size unless given)."""
        width = self.feature_dim if feature_dim is None else feature_dim
        return {"heads": ["B", len(self.heads)], "features": ["B", width]}

    @property
    def feature_dim(self) -> int:
        """Width of the full-size model's ``features`` output."""
        return len(POOLINGS) * self.channel_unit * sum(self.stage_ratios)

    def stage_channels(self, feature_dim: int) -> tuple[int, ...]:
        """Channels per stage of an engine whose ``features`` has ``feature_dim`` values
        (full size or a tiny configuration); raises ``ValueError`` when it does not split."""
        unit, rest = divmod(feature_dim, len(POOLINGS) * sum(self.stage_ratios))
        if rest or unit < 1:
            raise ValueError(
                f"{self.name} features of width {feature_dim} do not split into stages "
                f"(expected a multiple of {len(POOLINGS) * sum(self.stage_ratios)})"
            )
        return tuple(unit * r for r in self.stage_ratios)

    def trace_inputs_shape(self) -> tuple[int, ...]:
        """A small input shape (batch 1) for tracing and BatchNorm folding."""
        return self.input_shape(1, *self.trace_size)


_R2P1D_STAGES = ("f1", "f2", "f3", "f4")

MODELS: dict[str, ModelEntry] = {
    "r2p1d_HEKE_4": ModelEntry(
        name="r2p1d_HEKE_4",
        inputs=("clips",),
        frame_dims=(3, 8, "H", "W"),
        plan="snippets",
        num_snippets=12,  # the authors' setting for raw/synthetic sets (10 for in-the-wild)
        frames_per_snippet=8,
        stages=_R2P1D_STAGES,
        stage_ratios=(1, 2, 4, 8),  # 64, 128, 256, 512 channels
        channel_unit=64,
        grouped=("f4",),  # upstream regroups the top stage of the video backbone
        backbones=("resnet",),
        checkpoint_prefix="resnet.",
        trace_size=(32, 32),
    ),
    "resnet_HEKE_4": ModelEntry(
        name="resnet_HEKE_4",
        inputs=("rgb", "dif"),
        frame_dims=(3, "H", "W"),
        plan="pairs",
        num_snippets=20,
        frames_per_snippet=2,
        stages=tuple(f"{p}_{s}" for p in ("rgb", "dif") for s in _R2P1D_STAGES),
        stage_ratios=(4, 8, 16, 32, 1, 2, 4, 8),  # ResNet-50 on rgb, ResNet-34 on dif
        channel_unit=64,
        grouped=(),
        backbones=("spatial", "temporal"),
        checkpoint_prefix="spatial.",
        trace_size=(64, 64),
    ),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def model_entry(name: str) -> ModelEntry:
    """The entry of ``name``; :class:`UnknownModelError` lists the valid names."""
    try:
        return MODELS[name]
    except KeyError:
        valid = ", ".join(MODELS)
        raise UnknownModelError(f"unknown model {name!r}; valid models: {valid}") from None
