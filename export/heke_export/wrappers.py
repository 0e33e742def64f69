"""Deploy wrappers: what ``torch.onnx.export`` sees for each precision.

FP32: the reference model, returning ``(heads, features)`` as a tuple so outputs get names.

FP16 (mixed): the convolutional backbone(s) run in float16 with BatchNorm folded into the
convolutions *in float32 first* (folding after ``.half()`` would round twice and compute
``beta - mean*scale`` in float16). Each stage map is cast back to float32 before anything
else touches it, so the reference ``forward`` itself computes the pooled statistics (mean,
max, unbiased std, including the element count ``N = T*H*W``, which overflows float16 above
65504) and the grouped-conv heads in float32. Inputs and outputs stay float32. The casts are
explicit in the graph, which is what a strongly typed TensorRT network needs.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from heke_runtime.models import model_entry

_CONV = (nn.Conv2d, nn.Conv3d)
_BN = nn.modules.batchnorm._BatchNorm


class HeadsAndFeatures(nn.Module):
    """Returns ``(heads, features)`` of a HEKE model as a plain tuple."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(*inputs)
        return out.heads, out.features


class HalfBackbone(nn.Module):
    """Runs a backbone in float16 and hands float32 stage maps to the caller."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.half()

    def forward(self, x: Tensor) -> list[Tensor]:
        return [stage.float() for stage in self.backbone(x.half())]


def _conv_bn_pairs(module: nn.Module, example: Tensor) -> list[tuple[nn.Module, nn.Module]]:
    """(conv, bn) pairs where the BatchNorm consumes exactly that conv's output.

    Found from one traced forward pass, so it follows the real data flow instead of
    guessing from module order (``Conv2Plus1D`` ends with a conv its parent's BN follows).
    """
    calls: list[tuple[nn.Module, Tensor, Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: calls.append((m, i[0], o)))
        for m in module.modules()
        if isinstance(m, (*_CONV, _BN))
    ]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    made_by = {id(out): m for m, _, out in calls if isinstance(m, _CONV)}
    return [
        (made_by[id(inp)], m) for m, inp, _ in calls if isinstance(m, _BN) and id(inp) in made_by
    ]


def fold_batchnorm(module: nn.Module, example: Tensor) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv into it (float32, eval mode)."""
    names = {m: name for name, m in module.named_modules()}
    for conv, bn in _conv_bn_pairs(module, example):
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)  # type: ignore[type-var, arg-type]
        conv.weight, conv.bias = fused.weight, fused.bias
        parent, _, child = names[bn].rpartition(".")
        setattr(module.get_submodule(parent), child, nn.Identity())
    return module


def fp32_deploy(model: nn.Module) -> nn.Module:
    return HeadsAndFeatures(model).eval()


def fp16_deploy(model: nn.Module, model_name: str, examples: tuple[Tensor, ...]) -> nn.Module:
    """A copy of ``model`` with float16 backbones (BN folded in float32) and float32 rest."""
    deploy = copy.deepcopy(model).eval()
    # The submodules that return stage maps are the model entry's backbones.
    for attr, example in zip(model_entry(model_name).backbones, examples):
        backbone = fold_batchnorm(getattr(deploy, attr), example)
        setattr(deploy, attr, HalfBackbone(backbone))
    return HeadsAndFeatures(deploy).eval()
