"""Inference optimisations that keep fp32 results (up to float rounding): BatchNorm folding and channels_last.

`optimize_for_inference(model)` returns an eval-mode copy of a FastInst model in which every frozen (or eval-mode)
BatchNorm that directly follows a convolution is folded into that convolution's weight and bias:

* detectron2 ResNet: each `ConvNorm` (stem, conv1..conv3, shortcut) -> plain conv with bias, `norm` dropped;
* ResNet-vd: stem convs + their BNs, block `conv1/bn1`, `conv2/bn2` (not the deformable ones), `conv3/bn3` and the
  downsample conv + BN; folded BNs become `nn.Identity` so the module tree (and its forward code) is unchanged.

GroupNorm (pixel decoder) and LayerNorm (decoder) depend on the data and stay. The fold is done in float64.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

from .backbone import ConvNorm, DeformConv, FrozenBatchNorm2d, ResNetVd, VdBottleneck

_BN = (FrozenBatchNorm2d, nn.BatchNorm2d)
_M = TypeVar("_M", bound=nn.Module)


def _scale_shift(bn: FrozenBatchNorm2d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x * scale + shift of a frozen or eval-mode BatchNorm, in float64."""
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    scale = bn.weight.double() * (var.double() + bn.eps).rsqrt()
    return scale, bn.bias.double() - mean.double() * scale


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d | nn.BatchNorm2d) -> None:
    """Fold `bn` (applied right after `conv`) into conv's weight and bias, in place."""
    scale, shift = _scale_shift(bn)
    dtype = conv.weight.dtype
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.weight.copy_(weight.to(dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(dtype=dtype, device=conv.weight.device), requires_grad=False)
    else:
        conv.bias.copy_(bias.to(dtype))


def _fold_vd(backbone: ResNetVd) -> int:
    count = 0
    stem = backbone.conv1
    for i in (0, 3):
        conv, bn = stem[i], stem[i + 1]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, _BN):
            fold_bn(conv, bn)
            stem[i + 1] = nn.Identity()
            count += 1
    last, bn1 = stem[6], backbone.bn1
    if isinstance(last, nn.Conv2d) and isinstance(bn1, _BN):
        fold_bn(last, bn1)
        backbone.bn1 = nn.Identity()
        count += 1
    for block in backbone.modules():
        if not isinstance(block, VdBottleneck):
            continue
        for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            if isinstance(getattr(block, bn_name), _BN) and not isinstance(getattr(block, conv_name), DeformConv):
                fold_bn(getattr(block, conv_name), getattr(block, bn_name))
                setattr(block, bn_name, nn.Identity())
                count += 1
        if block.downsample is not None:
            conv, bn = block.downsample[1], block.downsample[2]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, _BN):
                fold_bn(conv, bn)
                block.downsample[2] = nn.Identity()
                count += 1
    return count


def fold_batchnorms(model: nn.Module) -> int:
    """Fold every conv -> BatchNorm pair of the backbone in place; returns how many were folded."""
    count = 0
    for module in model.modules():
        if isinstance(module, ConvNorm) and isinstance(module.norm, _BN):
            fold_bn(module, module.norm)
            module.norm = None
            count += 1
        elif isinstance(module, ResNetVd):
            count += _fold_vd(module)
    return count


def optimize_for_inference(model: _M, channels_last: bool = False, inplace: bool = False) -> _M:
    """An eval-mode FastInst with BatchNorms folded into convs (and channels_last weights if asked).

    Outputs equal the unfused model's up to fp32 rounding. With `inplace=False` (default) `model` is left as is.
    channels_last pays off for the convolutions on CPUs with oneDNN and on GPUs with tensor cores; measure.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    fold_batchnorms(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
