"""The HEKE models with the authors' module tree, so their state dicts load strictly.

``r2p1d_HEKE_4``: R(2+1)D-18 backbone (upstream ``init_models/resnet2p1d.py``) and grouped
heads. ``resnet_HEKE_4``: 2D ResNet-50 on RGB frames and ResNet-34 on frame differences.
Both return :class:`HekeOutput`: ``heads [B,4]`` (GMSD, ST-GMSD, ST-RRED, MS-SSIM, higher means
more distorted) and ``features``: per stage ``[mean, max, std]`` per channel, stage by stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn


class HekeOutput(NamedTuple):
    heads: Tensor
    features: Tensor


@dataclass(frozen=True)
class BackboneWidths:
    """Channel widths of the four stages; the tiny test configuration shrinks them."""

    stem: int = 45
    stages: tuple[int, int, int, int] = (64, 128, 256, 512)
    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    hidden: int = 32


def pooled_stats(x: Tensor) -> Tensor:
    """``[mean, max, unbiased std]`` over all dims after the channel one, as upstream."""
    dims = tuple(range(2, x.dim()))
    mean = x.mean(dim=dims)
    peak = x.amax(dim=dims)
    std = torch.std(x, dim=dims)
    return torch.cat([mean, peak, std], dim=1)


# --------------------------------------------------------------------------- R(2+1)D-18


def midplanes(inplanes: int, planes: int) -> int:
    """R(2+1)D keeps the parameter count of a full 3x3x3 convolution."""
    return (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)


class Conv2Plus1D(nn.Sequential):
    def __init__(self, inplanes: int, planes: int, mid: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(inplanes, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, planes, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
        )


class BasicBlock3d(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        mid = midplanes(inplanes, planes)
        self.conv1 = nn.Sequential(
            Conv2Plus1D(inplanes, planes, mid, stride), nn.BatchNorm3d(planes), nn.ReLU(True)
        )
        self.conv2 = nn.Sequential(Conv2Plus1D(planes, planes, mid), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm3d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + residual)


class R2Plus1D(nn.Module):
    """Upstream ``VideoResNet`` with ``R2Plus1dStem``; returns the four stage maps."""

    def __init__(self, widths: BackboneWidths) -> None:
        super().__init__()
        first = widths.stages[0]
        self.stem = nn.Sequential(
            nn.Conv3d(3, widths.stem, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
            nn.BatchNorm3d(widths.stem),
            nn.ReLU(inplace=True),
            nn.Conv3d(widths.stem, first, (3, 1, 1), (1, 1, 1), (1, 0, 0), bias=False),
            nn.BatchNorm3d(first),
            nn.ReLU(inplace=True),
        )
        inplanes = first
        for index, (planes, count) in enumerate(zip(widths.stages, widths.blocks), start=1):
            stride = 1 if index == 1 else 2
            blocks = [BasicBlock3d(inplanes, planes, stride)]
            blocks += [BasicBlock3d(planes, planes) for _ in range(1, count)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            inplanes = planes

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        stages = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            stages.append(x)
        return stages


class HekeR2p1d(nn.Module):
    """``HEKE_BVQA_r2p1d``: input ``clips [B,3,8,H,W]``."""

    def __init__(self, widths: BackboneWidths | None = None) -> None:
        super().__init__()
        widths = widths or BackboneWidths()
        groups, hidden, top = 4, widths.hidden, widths.stages[3]
        self.feature_sizes = tuple(3 * c for c in widths.stages)
        self.resnet = R2Plus1D(widths)
        self.group_conv_1 = nn.Conv2d(top, hidden * groups * 4, (2, 1), groups=groups)
        self.group_conv_2 = nn.Conv2d(hidden * groups * 4, hidden * groups, 1, groups=groups)
        self.group_conv_3 = nn.Conv2d(hidden * groups, groups, 1, groups=groups)
        self.act = nn.ELU()

    def forward(self, clips: Tensor) -> HekeOutput:
        stages = self.resnet(clips)
        top = stages[3]
        # Upstream: cat(maxpool, avgpool) on dim 2 -> [B, C, 2, 1] for the (2,1) kernel.
        pooled = torch.stack([top.amax(dim=(2, 3, 4)), top.mean(dim=(2, 3, 4))], dim=2)
        x = self.act(self.group_conv_1(pooled.unsqueeze(3)))
        x = self.act(self.group_conv_2(x))
        heads = self.group_conv_3(x).flatten(1)
        features = torch.cat([pooled_stats(s) for s in stages], dim=1)
        return HekeOutput(heads, features)


# --------------------------------------------------------------------------- 2D ResNets


class BasicBlock2d(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample2d(inplanes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck2d(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample2d(inplanes, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _downsample2d(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes)
    )


class ResNet2d(nn.Module):
    """torchvision-style ResNet without ``fc``; returns the four stage maps."""

    def __init__(
        self,
        block: type[BasicBlock2d] | type[Bottleneck2d],
        blocks: Sequence[int],
        stages: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stages[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stages[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stages[0]
        self.out_channels: list[int] = []
        for index, (planes, count) in enumerate(zip(stages, blocks), start=1):
            stride = 1 if index == 1 else 2
            layers = [block(inplanes, planes, stride)]
            inplanes = planes * block.expansion
            layers += [block(inplanes, planes) for _ in range(1, count)]
            self.add_module(f"layer{index}", nn.Sequential(*layers))
            self.out_channels.append(inplanes)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            stages.append(x)
        return stages


class HekeResnet(nn.Module):
    """``HEKE_BVQA_resnet``: inputs ``rgb [B,3,H,W]`` and ``dif [B,3,H,W]``.

    ``features`` holds the RGB stages 1..4 then the difference stages 1..4.
    """

    def __init__(self, stages: Sequence[int] = (64, 128, 256, 512), tiny: bool = False) -> None:
        super().__init__()
        spatial_blocks = (1, 1, 1, 1) if tiny else (3, 4, 6, 3)
        temporal_blocks = (1, 1, 1, 1) if tiny else (3, 4, 6, 3)
        self.spatial = ResNet2d(Bottleneck2d, spatial_blocks, stages)
        self.temporal = ResNet2d(BasicBlock2d, temporal_blocks, stages)
        pooled = 2 * (self.spatial.out_channels[3] + self.temporal.out_channels[3])
        wide = 1024 if not tiny else 64
        hidden = 32 if not tiny else 4
        self.feature_sizes = tuple(
            3 * c for c in self.spatial.out_channels + self.temporal.out_channels
        )
        self.group_conv_1 = nn.Conv2d(pooled, wide, 1)
        self.group_conv_2 = nn.Conv2d(wide, hidden * 4, 1, groups=4)
        self.group_conv_3 = nn.Conv2d(hidden * 4, 4, 1, groups=4)
        self.act = nn.ELU()

    def forward(self, rgb: Tensor, dif: Tensor) -> HekeOutput:
        rgb_stages = self.spatial(rgb)
        dif_stages = self.temporal(dif)
        tops = (rgb_stages[3], dif_stages[3])
        # Upstream order: max(rgb), avg(rgb), max(dif), avg(dif) on the channel axis.
        pooled = torch.cat([op(t) for t in tops for op in (_gmax, _gavg)], dim=1)
        x = self.act(self.group_conv_1(pooled))
        x = self.act(self.group_conv_2(x))
        heads = self.group_conv_3(x).flatten(1)
        features = torch.cat([pooled_stats(s) for s in rgb_stages + dif_stages], dim=1)
        return HekeOutput(heads, features)


def _gmax(x: Tensor) -> Tensor:
    return x.amax(dim=(2, 3), keepdim=True)


def _gavg(x: Tensor) -> Tensor:
    return x.mean(dim=(2, 3), keepdim=True)
