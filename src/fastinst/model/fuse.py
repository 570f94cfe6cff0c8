"""Inference optimisations: BatchNorm folding, channels_last, and the reduced-precision path (`inference_dtype`).

`optimize_for_inference(model)` returns an eval-mode copy of a FastInst model in which every frozen (or eval-mode)
BatchNorm that directly follows a convolution is folded into that convolution's weight and bias (fp32 results up to
float rounding):

* detectron2 ResNet: each `ConvNorm` (stem, conv1..conv3, shortcut) -> plain conv with bias, `norm` dropped;
* ResNet-vd: stem convs + their BNs, block `conv1/bn1`, `conv2/bn2` (not the deformable ones), `conv3/bn3` and the
  downsample conv + BN; folded BNs become `nn.Identity` so the module tree (and its forward code) is unchanged.

GroupNorm (pixel decoder) and LayerNorm (decoder) depend on the data and stay. The fold is done in float64.

With `dtype=torch.bfloat16` (or float16) the conv and linear weights are cast once, after the fold, and the model is
meant to run under `torch.autocast` of that dtype: matmuls and convs then run in the low precision without a cast of
their weights per call, while autocast keeps norms, softmax and the post-processing in fp32 (their parameters stay
fp32, as do `pixel_mean` / `pixel_std`). `inference_dtype` picks the default per device (see its docstring).
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

from ..defaults import PRECISIONS
from .backbone import ConvNorm, DeformConv, FrozenBatchNorm2d, ResNetVd, VdBottleneck

_BN = (FrozenBatchNorm2d, nn.BatchNorm2d)
_M = TypeVar("_M", bound=nn.Module)

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPES: dict[str, torch.dtype] = {name: _TORCH_DTYPES[name] for name in PRECISIONS if name != "auto"}
DTYPE_CHOICES = PRECISIONS  # the names live in the torch-free `fastinst.defaults`, which the CLI parsers read


def bf16_hardware() -> str | None:
    """The bf16 matrix hardware of this CPU: "AMX" (Intel AMX tiles), "AVX512-BF16" (bf16 dot products: AMD Zen 4
    and later, Intel Cooper Lake), or None (bf16 would be emulated, e.g. Cascade Lake)."""
    cpu = torch.cpu
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return None


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 matrix hardware (`bf16_hardware`), where bf16 convs and matmuls run faster than
    fp32."""
    return bf16_hardware() is not None


def inference_dtype(name: str, device: torch.device | str) -> str:
    """The precision the user path runs in: `name` as given, or for "auto" the fastest one measured per device.

    * CUDA: fp16 (tensor cores; FastInst's logits and masks are well inside fp16's range);
    * CPU with bf16 hardware (`bf16_hardware`): bf16. Measured on the D1-R50 user path, 2 threads: AMX ~2x faster
      than fp32 end to end; AMD Zen 4 (AVX512-BF16) 470 vs 740 ms, 95 % of the fp32 instances found again
      (benchmarks/README.md);
    * other CPUs: fp32, exact. Without bf16 hardware bf16 is emulated (D1-R50 network 2.7x slower than fp32 on
      Cascade Lake).
    fp16 asked for on a CPU runs as bf16 (CPU autocast's half type).
    """
    if name not in DTYPE_CHOICES:
        raise ValueError(f"dtype {name!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    kind = torch.device(device).type
    if name == "auto":
        if kind == "cuda":
            return "fp16"
        return "bf16" if kind == "cpu" and native_bf16_cpu() else "fp32"
    if name == "fp16" and kind == "cpu":
        return "bf16"
    return name


def dtype_reason(name: str, device: torch.device | str) -> str:
    """Why `inference_dtype(name, device)` picked what it did, for the line that says what ran: "auto: AMX",
    "auto: AVX512-BF16", "auto: no bf16 hardware", "auto: CUDA", "fp16 asked: CPUs run bf16", or "" for a precision
    asked for and run as is."""
    kind = torch.device(device).type
    if name == "auto":
        if kind == "cpu":
            return f"auto: {bf16_hardware() or 'no bf16 hardware'}"
        return f"auto: {kind.upper() if kind == 'cuda' else kind}"
    if name == "fp16" and kind == "cpu":
        return "fp16 asked: CPUs run bf16"
    return ""


def cast_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the own weight and bias of every Conv2d and Linear to `dtype` in place (norms, embeddings, attention
    blocks and buffers keep theirs); returns how many modules were cast. Run the model under autocast."""
    inside_attention = {id(m) for a in model.modules() if isinstance(a, nn.MultiheadAttention) for m in a.modules()}
    count = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and id(module) not in inside_attention:
            for name, p in list(module.named_parameters(recurse=False)):  # not a ConvNorm's norm
                setattr(module, name, nn.Parameter(p.detach().to(dtype), requires_grad=False))
            count += 1
    return count


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


def optimize_for_inference(
    model: _M, channels_last: bool = False, inplace: bool = False, dtype: torch.dtype | None = None
) -> _M:
    """An eval-mode FastInst with BatchNorms folded into convs, channels_last weights if asked, and the conv / linear
    weights cast to `dtype` if given (then run it under `torch.autocast(device_type, dtype)`).

    In fp32 the outputs equal the unfused model's up to float rounding. With `inplace=False` (default) `model` is left
    as is. channels_last pays off for the convolutions with oneDNN and on GPUs with tensor cores (measurements:
    benchmarks/README.md).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    fold_batchnorms(model)
    if dtype is not None and dtype != torch.float32:
        cast_weights(model, dtype)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
