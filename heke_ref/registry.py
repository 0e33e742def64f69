"""Models by name: the torch modules that build each model of :mod:`heke_runtime.models`,
each with a tiny configuration for fast tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from heke_ref.models import BackboneWidths, HekeR2p1d, HekeResnet
from heke_runtime.models import model_entry

TINY_R2P1D = BackboneWidths(stem=8, stages=(8, 16, 32, 64), blocks=(1, 1, 1, 1), hidden=4)


@dataclass(frozen=True)
class Builders:
    """How to build one model at full size and in its tiny test configuration."""

    build: Callable[[], nn.Module]
    build_tiny: Callable[[], nn.Module]


BUILDERS: dict[str, Builders] = {
    "r2p1d_HEKE_4": Builders(HekeR2p1d, lambda: HekeR2p1d(TINY_R2P1D)),
    "resnet_HEKE_4": Builders(HekeResnet, lambda: HekeResnet(stages=(8, 16, 32, 64), tiny=True)),
}


def create_model(name: str, *, tiny: bool = False) -> nn.Module:
    """A fresh model in eval mode (random weights until a checkpoint is loaded)."""
    model_entry(name)  # an unknown name lists the valid ones
    builders = BUILDERS[name]
    model = builders.build_tiny() if tiny else builders.build()
    return model.eval()
