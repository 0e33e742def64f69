"""Models by name, each with a tiny configuration for fast tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from heke_ref.models import BackboneWidths, HekeR2p1d, HekeResnet
from heke_runtime.errors import UnknownModelError
from heke_runtime.spec import PreprocessSpec, default_spec

TINY_R2P1D = BackboneWidths(stem=8, stages=(8, 16, 32, 64), blocks=(1, 1, 1, 1), hidden=4)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[[], nn.Module]
    build_tiny: Callable[[], nn.Module]
    inputs: tuple[str, ...]
    checkpoint_file: str

    @property
    def spec(self) -> PreprocessSpec:
        return default_spec(self.name)


MODELS: dict[str, ModelEntry] = {
    "r2p1d_HEKE_4": ModelEntry(
        "r2p1d_HEKE_4",
        HekeR2p1d,
        lambda: HekeR2p1d(TINY_R2P1D),
        ("clips",),
        "r2p1d_model_HEKE4.pkl",
    ),
    "resnet_HEKE_4": ModelEntry(
        "resnet_HEKE_4",
        HekeResnet,
        lambda: HekeResnet(stages=(8, 16, 32, 64), tiny=True),
        ("rgb", "dif"),
        "resnet_model_HEKE4.pkl",
    ),
}


def model_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        valid = ", ".join(MODELS)
        raise UnknownModelError(f"unknown model {name!r}; valid models: {valid}") from None


def create_model(name: str, *, tiny: bool = False) -> nn.Module:
    """A fresh model in eval mode (random weights until a checkpoint is loaded)."""
    entry = model_entry(name)
    model = entry.build_tiny() if tiny else entry.build()
    return model.eval()
