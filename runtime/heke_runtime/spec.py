"""The preprocessing spec: one frozen record that travels with every artifact."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from heke_runtime.models import MODEL_NAMES, model_entry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """How frames become model input; sidecars store it and the runtime reads it back.

    ``num_snippets``: 12 is the authors' setting for raw/synthetic datasets, 10 for
    in-the-wild files, 20 single frames (and their differences) for the resnet model.
    """

    model: str = "r2p1d_HEKE_4"
    num_snippets: int = 12
    frames_per_snippet: int = 8
    offset: int = 10
    scale_rule: str = "ceil(min(W,H)/256) - (min(W,H) > 760), at least 1"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "rgb24 as FFmpeg's swscale converts (BT.601 limited range for yuv420p)"
    short_video_policy: str = "clamp indices to [0, F-1] and warn"

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; valid: {', '.join(MODEL_NAMES)}")
        if self.num_snippets < 2:
            raise ValueError(f"num_snippets must be at least 2, got {self.num_snippets}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown preprocessing spec fields: {sorted(unknown)}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def default_spec(model: str) -> PreprocessSpec:
    """The authors' sampling for a model (its entry): 12 snippets of 8 frames, or 20 pairs."""
    entry = model_entry(model)
    return PreprocessSpec(
        model=entry.name,
        num_snippets=entry.num_snippets,
        frames_per_snippet=entry.frames_per_snippet,
    )
