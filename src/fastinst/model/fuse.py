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

Given an inference dtype and channels_last (the `Predictor` always gives both: fp32 or bf16) on a CPU, the
backbone's blocks also become `FusedBlock`s (and the ResNet stem a `FusedStem`): each conv runs as one oneDNN call
with its ReLU, and the last one with the residual add and ReLU, instead of separate elementwise passes over the
feature maps (on an AMX CPU those passes had cost a third as much as the convs themselves in bf16; on Zen 4 the fp32
network goes 711 -> 617 ms, its outputs bit-identical there). Without a dtype the model keeps its plain blocks (what
a model moved to a GPU afterwards needs).
"""

from __future__ import annotations

import copy
import functools
import weakref
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..defaults import PRECISIONS
from .backbone import (
    BasicBlock,
    BottleneckBlock,
    ConvNorm,
    DeformConv,
    FrozenBatchNorm2d,
    ResNetVd,
    Stem,
    VdBottleneck,
)

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
    weights cast to `dtype` if given (then run it under `torch.autocast(device_type, dtype)`); with `dtype` fp32 or
    bf16 and channels_last on a CPU, the ResNet blocks and stem fused with their ReLUs and residual adds
    (`fuse_blocks`).

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
    if channels_last and dtype in (torch.float32, torch.bfloat16) and pointwise_fusion_available(model):
        fuse_blocks(model)  # the layout oneDNN's fused ops are for (NCHW bf16 falls back to an add_relu without bf16)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def pointwise_fusion_available(model: nn.Module) -> bool:
    """Whether `FusedBlock` can run `model`: a CPU model, a PyTorch built with oneDNN, and fused convolutions that run
    here in the model's conv dtype and give eager's answer (`fused_ops_work`)."""
    first = next(model.parameters(), None)
    on_cpu = first is None or first.device.type == "cpu"
    if not (on_cpu and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return False
    dtype = next((m.weight.dtype for m in model.modules() if isinstance(m, nn.Conv2d)), torch.float32)
    return fused_ops_work(dtype)


@functools.cache
def fused_ops_work(dtype: torch.dtype) -> bool:
    """Whether `fused_conv` runs on this machine in `dtype` and gives what the eager ops give, once per process: a 3x3
    conv + ReLU and a 1x1 conv + residual + ReLU on a tiny channels_last input. A build or CPU whose oneDNN lacks the
    fused kernels (or gets them wrong) keeps the plain blocks instead of failing in the middle of a prediction."""
    generator = torch.Generator().manual_seed(0)  # the caller's random streams are left as they are

    def tensor(*shape: int) -> torch.Tensor:
        values = torch.randn(*shape, generator=generator).to(dtype)
        return values.contiguous(memory_format=torch.channels_last) if values.dim() == 4 else values

    x, residual = tensor(1, 16, 6, 6), tensor(1, 16, 6, 6)
    rtol, atol = (1e-4, 1e-4) if dtype == torch.float32 else (0.05, 0.1)
    try:
        with torch.no_grad():
            for k, res in ((3, None), (1, residual)):
                conv = nn.utils.skip_init(nn.Conv2d, 16, 16, k, padding=k // 2, dtype=dtype)  # no RNG drawn
                conv.weight = nn.Parameter(tensor(16, 16, k, k), requires_grad=False)  # channels_last
                conv.bias = nn.Parameter(tensor(16), requires_grad=False)
                expected, got = eager_conv(conv, x, True, res), fused_conv(conv, x, relu=True, residual=res)
                if not torch.allclose(got.float(), expected.float(), rtol=rtol, atol=atol):
                    return False
    except (RuntimeError, NotImplementedError):
        return False
    return True


def fused_conv(conv: nn.Conv2d, x: torch.Tensor, relu: bool, residual: torch.Tensor | None = None) -> torch.Tensor:
    """relu(conv(x) + residual), or conv(x) [-> ReLU] without a residual, as one oneDNN convolution with post-ops,
    in the conv's weight dtype (x and residual are cast to it, as autocast would), with the weight in oneDNN's layout
    for x's shape (`packed_weight`). Under an exporter or tracer (ONNX, torch.export, torch.jit) as the plain ops they
    stand for, which those can write out: a prepared model exports as its plain copy does."""
    x = x.to(conv.weight.dtype)
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return eager_conv(conv, x, relu, residual)
    weight = conv.weight if torch.compiler.is_compiling() else packed_weight(conv, x)
    geometry = _geometry(conv)
    op = torch.ops.mkldnn._convolution_pointwise
    if residual is None:
        return op(x, weight, conv.bias, *geometry, "relu" if relu else "none", [], "")
    return op.binary(x, residual.to(x.dtype), weight, conv.bias, *geometry, "add", None, "relu", [], "")


def eager_conv(conv: nn.Conv2d, x: torch.Tensor, relu: bool, residual: torch.Tensor | None = None) -> torch.Tensor:
    """What `fused_conv` computes, as separate eager ops: relu(conv(x) + residual), or conv(x) [-> ReLU]."""
    y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    y = y if residual is None else y + residual.to(y.dtype)
    return F.relu(y) if relu or residual is not None else y


def _geometry(conv: nn.Conv2d) -> tuple[list, list, list, int]:
    """(padding, stride, dilation, groups) of `conv`, as oneDNN's convolution ops take them."""
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


_PACKED: weakref.WeakKeyDictionary[nn.Conv2d, tuple[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()


def packed_weight(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv`'s weight reordered into the blocked layout oneDNN's convolution of an input shaped as `x` takes, made
    once per input shape. Given the plain weight, oneDNN reorders it at every call: 66 reorders, 9 ms of a 321 ms
    bf16 network on Zen 4. One shape is kept per conv, the last one: a weight packed for another input size may need
    a slow reorder of its own (60 ms for one 2048x1024 conv at 640x864 packed for 768x576), so a new size (or a
    changed weight) packs again, which costs what one call's reorders cost."""
    key = (tuple(x.shape), conv.weight.data_ptr(), conv.weight._version)
    entry = _PACKED.get(conv)
    if entry is None or entry[0] != key:
        packed = torch.ops.mkldnn._reorder_convolution_weight(conv.weight, *_geometry(conv), list(x.shape))
        _PACKED[conv] = entry = (key, packed)
    return entry[1]


Block = BasicBlock | BottleneckBlock | VdBottleneck


class FusedBlock(nn.Module):
    """A ResNet block with its BatchNorms folded, each conv run by `fused_conv` with its ReLU and the last one with
    the residual add + ReLU (`BasicBlock`: conv1, conv2; `BottleneckBlock` / `VdBottleneck`: conv1..conv3).

    The same convs under the same names, registered in the block's order (the state_dict keys do not change); a
    deformable 3x3 runs as before, its norm and ReLU apart. In bf16 oneDNN adds the residual before rounding (eager
    rounds the conv's output to bf16 first); otherwise the arithmetic is the block's."""

    conv2_offset: nn.Conv2d  # these two only for a deformable conv2
    bn2: nn.Module

    def __init__(self, block: Block):
        super().__init__()
        vd = isinstance(block, VdBottleneck)
        self.shortcut: ConvNorm | None = None if isinstance(block, VdBottleneck) else block.shortcut
        self.conv1 = block.conv1
        if vd and block.deform:
            self.conv2_offset = cast(nn.Conv2d, block.conv2_offset)
        self.conv2: nn.Module = block.conv2  # a Conv2d, or a DeformConv fed by `conv2_offset`
        if vd and block.deform:
            self.bn2 = cast(nn.Module, block.bn2)  # not folded into a deformable conv
        self.conv3 = None if isinstance(block, BasicBlock) else block.conv3
        self.downsample = cast(nn.Sequential | None, block.downsample) if vd else None  # (pool, 1x1 conv, Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)  # (B, Cin, H, W)
        if self.downsample is not None:
            identity = fused_conv(cast(nn.Conv2d, self.downsample[1]), self.downsample[0](x), relu=False)
        elif self.shortcut is not None:
            identity = fused_conv(self.shortcut, x, relu=False)  # (B, Cout, H/s, W/s)
        else:
            identity = x
        h = fused_conv(self.conv1, x, relu=True)  # (B, width, H or H/s, ...)
        if self.conv3 is None:  # basic block: relu(conv2(h) + identity)
            return fused_conv(cast(nn.Conv2d, self.conv2), h, relu=True, residual=identity)
        if isinstance(self.conv2, nn.Conv2d):
            h = fused_conv(self.conv2, h, relu=True)  # (B, width, H/s, W/s)
        else:  # deformable: sampled in fp32 (`DeformConv`), its norm and ReLU apart
            h = F.relu(self.bn2(self.conv2(h, self.conv2_offset(h)).to(x.dtype)))
        return fused_conv(self.conv3, h, relu=True, residual=identity)  # relu(conv3(h) + identity)


class FusedStem(nn.Module):
    """The ResNet `Stem` with its BatchNorm folded: the 7x7 conv and its ReLU as one oneDNN call (a separate ReLU
    was a pass over the largest feature map of the network: 1.9 ms on an AMX CPU), then the max pool. The same
    `conv1` keys."""

    def __init__(self, stem: Stem):
        super().__init__()
        self.conv1 = stem.conv1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = fused_conv(self.conv1, x, relu=True)  # (B, 64, H/2, W/2)
        return F.max_pool2d(h, kernel_size=3, stride=2, padding=1)  # (B, 64, H/4, W/4)


def fuse_blocks(model: nn.Module) -> int:
    """Replace every ResNet block and stem of `model` whose BatchNorms are folded by a `FusedBlock` / `FusedStem`,
    in place; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Block) and not any(isinstance(m, _BN) for m in _foldable_norms(child)):
                setattr(parent, name, FusedBlock(child))
                count += 1
            elif isinstance(child, Stem) and child.conv1.norm is None:
                setattr(parent, name, FusedStem(child))
                count += 1
    return count


def _foldable_norms(block: Block) -> list[nn.Module | None]:
    """The norms of a block that folding removes (all but a deformable conv's)."""
    if isinstance(block, VdBottleneck):
        return [block.bn1, block.bn3, *([] if block.deform else [block.bn2]), *(block.downsample or [])]
    convs = [block.conv1, block.conv2, block.shortcut, *([] if isinstance(block, BasicBlock) else [block.conv3])]
    return [c.norm for c in convs if c is not None]
