"""Backbones: detectron2-layout ResNet (R18/34/50/101) and timm-layout ResNet-50-vd with deformable convs.

Both take a normalised image batch (B, 3, H, W) and return `{"res3": (B, C3, H/8, W/8), "res4": (B, C4, H/16, W/16),
"res5": (B, C5, H/32, W/32)}`. Module names follow the official checkpoints (SPEC §5.2, §5.3), so
`state_dict()` keys are the released ones. BatchNorm is frozen (four buffers, identity init) unless `norm="BN"`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine terms, stored as buffers: y = x * scale + shift."""

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # torchvision/timm BN files carry it; we do not
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind == "GN":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"unknown norm {kind!r}; use FrozenBN, BN or GN")


class ConvNorm(nn.Conv2d):
    """Conv2d whose normalisation is a child named `norm` (keys `<name>.weight`, `<name>.norm.*`), then an optional
    ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        norm: nn.Module | None = None,
        relu: bool = False,
        bias: bool = False,
    ):
        super().__init__(cin, cout, k, stride=stride, padding=k // 2, bias=bias)
        self.norm = norm
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


# ---------------------------------------------------------------------------------------------------------------------
# A. detectron2-layout ResNet: stem.conv1, res2..res5, blocks with conv1..conv3 (+ shortcut), stride in the 3x3.
# ---------------------------------------------------------------------------------------------------------------------


class BottleneckBlock(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride, make_norm(norm, cout)) if cin != cout else None
        self.conv1 = ConvNorm(cin, width, 1, 1, make_norm(norm, width), relu=True)
        self.conv2 = ConvNorm(width, width, 3, stride, make_norm(norm, width), relu=True)
        self.conv3 = ConvNorm(width, cout, 1, 1, make_norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride, make_norm(norm, cout)) if (cin != cout or stride != 1) else None
        self.conv1 = ConvNorm(cin, cout, 3, stride, make_norm(norm, cout), relu=True)
        self.conv2 = ConvNorm(cout, cout, 3, 1, make_norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv2(self.conv1(x)) + identity)


class Stem(nn.Module):
    def __init__(self, norm: str, width: int = 64):
        super().__init__()
        self.conv1 = ConvNorm(3, width, 7, 2, make_norm(norm, width), relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class ResNet(nn.Module):
    """detectron2's ResNet (`build_resnet_backbone`, STRIDE_IN_1X1=False, RES5_DILATION=1).

    `width` scales every stage (64 = the standard network; the CPU demo uses a narrower one)."""

    # the four stages, registered in __init__ under these names (the checkpoints' `res2.0.conv1.weight`, ...)
    res2: nn.Sequential
    res3: nn.Sequential
    res4: nn.Sequential
    res5: nn.Sequential

    def __init__(self, depth: int = 50, norm: str = "FrozenBN", width: int = 64):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        bottleneck = depth >= 50
        self.stem = Stem(norm, width)
        cin = width
        base = width
        self.out_channels: dict[str, int] = {}
        for i, n in enumerate(_DEPTHS[depth]):
            width = base * 2**i
            cout = width * 4 if bottleneck else width
            block = BottleneckBlock if bottleneck else BasicBlock
            blocks = [
                block(cin if b == 0 else cout, width, cout, 2 if (b == 0 and i > 0) else 1, norm) for b in range(n)
            ]
            self.add_module(f"res{i + 2}", nn.Sequential(*blocks))
            self.out_channels[f"res{i + 2}"] = cout
            cin = cout
        for m in self.modules():  # c2_msra_fill
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.res2(self.stem(x))  # (B, 256, H/4, W/4) for R50
        c3 = self.res3(x)  # (B, 512, H/8, W/8)
        c4 = self.res4(c3)  # (B, 1024, H/16, W/16)
        c5 = self.res5(c4)  # (B, 2048, H/32, W/32)
        return {"res3": c3, "res4": c4, "res5": c5}


# ---------------------------------------------------------------------------------------------------------------------
# B. ResNet-vd (timm names): deep stem, avg-pool shortcut, non-modulated DCNv1 in the 3x3 of layer3/layer4.
# ---------------------------------------------------------------------------------------------------------------------


class DeformConv(nn.Module):
    """Non-modulated deformable 3x3 conv (DCNv1, one offset group) with a single `weight` and no bias.

    Training (autograd on) runs torchvision's `deform_conv2d`. Inference runs `sampled_deform_conv`, the same
    function written with two standard ops: 2.3-2.7x faster than torchvision's CPU kernel in fp32 on the D3
    R50-vd-DCN layer shapes (AMD Zen 4, 2 threads), its matmul follows autocast (bf16 / fp16), and it exports to
    ONNX and OpenVINO as it is (ONNX `DeformConv` needs opset 19 and most runtimes lack it)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(cout, cin, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=1)

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        # offsets: (B, 18, H', W'), channel 2k = dy, 2k+1 = dx for tap k = 3i + j; sampled in fp32 as the official
        if torch.is_grad_enabled():
            return deform_conv2d(x.float(), offset.float(), self.weight.float(), stride=self.stride, padding=1)
        return sampled_deform_conv(x, offset, self.weight, self.stride)


def sampled_deform_conv(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """DCNv1 3x3 (padding 1, one offset group) as bilinear sampling + a matmul: `deform_conv2d` up to float rounding.

    x (B, C, H, W), offset (B, 18, H', W'), weight (O, C, 3, 3) -> (B, O, H', W'). Tap k = 3i + j of output (y, x)
    reads x at (y·stride − 1 + i + dy_k, x·stride − 1 + j + dx_k), bilinear, zero outside the image."""
    x, offset = x.float(), offset.float()
    b, c, h, w = x.shape
    ho, wo = offset.shape[-2:]
    off = offset.reshape(b, 9, 2, ho, wo)  # (B, 9 taps, (dy, dx), H', W')
    taps = torch.arange(9, device=x.device)
    ki = torch.div(taps, 3, rounding_mode="floor").to(x.dtype).view(1, 9, 1, 1)
    kj = (taps % 3).to(x.dtype).view(1, 9, 1, 1)
    ys = (torch.arange(ho, device=x.device) * stride - 1).to(x.dtype).view(1, 1, -1, 1)
    xs = (torch.arange(wo, device=x.device) * stride - 1).to(x.dtype).view(1, 1, 1, -1)
    py = ys + ki + off[:, :, 0]  # (B, 9, H', W') pixel rows to sample
    px = xs + kj + off[:, :, 1]
    # pixel p -> grid_sample's (2p + 1) / size − 1 (align_corners=False): exact for any size, 1 included
    grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], dim=-1)  # (B, 9, H', W', 2)
    cols = F.grid_sample(x, grid.reshape(b, 9 * ho, wo, 2), mode="bilinear", padding_mode="zeros", align_corners=False)
    cols = cols.reshape(b, c * 9, ho * wo)  # (B, C·9, H'·W'): channel-major, tap-minor, as the weight's (C, 3, 3)
    out = torch.matmul(weight.reshape(weight.shape[0], c * 9), cols)  # (B, O, H'·W'); bf16 under autocast
    return out.reshape(b, -1, ho, wo).float()


class VdBottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, deform: bool, norm: str):
        super().__init__()
        cout = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2: nn.Module  # DeformConv (or export's stand-in) when `deform`, else a plain Conv2d
        if deform:
            self.conv2_offset = nn.Conv2d(planes, 18, 3, stride=stride, padding=1)
            for p in self.conv2_offset.parameters():  # weight and bias: zero offsets, a plain 3x3 conv at init
                nn.init.zeros_(p)
            self.conv2 = DeformConv(planes, planes, stride)
        else:
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = make_norm(norm, cout)
        self.deform = deform
        self.downsample = None
        if cin != cout or stride != 1:
            pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity()
            self.downsample = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), make_norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        if self.deform:
            h = self.conv2(h, self.conv2_offset(h)).to(x.dtype)
        else:
            h = self.conv2(h)
        h = F.relu(self.bn2(h))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNetVd(nn.Module):
    """FastInst's timm-style ResNet-50-vd (`build_resnet_vd_backbone`): stem width 32, avg-down, DCN per stage."""

    # the four stages, registered in __init__ under timm's names (`layer1.0.conv1.weight`, ...)
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, depth: int = 50, deform_stages=(False, False, True, True), norm: str = "FrozenBN"):
        super().__init__()
        if depth not in (50, 101):
            raise ValueError(f"ResNet-vd depth must be 50 or 101, got {depth}")
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False),
            make_norm(norm, 32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False),
            make_norm(norm, 32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False),
        )
        self.bn1 = make_norm(norm, 64)
        cin = 64
        self.out_channels: dict[str, int] = {}
        for i, n in enumerate(_DEPTHS[depth]):
            planes = 64 * 2**i
            blocks = [
                VdBottleneck(
                    cin if b == 0 else planes * 4, planes, 2 if (b == 0 and i > 0) else 1, deform_stages[i], norm
                )
                for b in range(n)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels[f"res{i + 2}"] = planes * 4
            cin = planes * 4

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)  # (B, 64, H/4, W/4)
        x = self.layer1(x)
        c3 = self.layer2(x)  # (B, 512, H/8, W/8)
        c4 = self.layer3(c3)  # (B, 1024, H/16, W/16)
        c5 = self.layer4(c4)  # (B, 2048, H/32, W/32)
        return {"res3": c3, "res4": c4, "res5": c5}


def build_backbone(
    kind: str, depth: int, deform_stages=(False,) * 4, norm: str = "FrozenBN", width: int = 64
) -> ResNet | ResNetVd:
    if kind == "resnet":
        return ResNet(depth, norm, width)
    if kind == "resnet_vd":
        return ResNetVd(depth, deform_stages, norm)
    raise ValueError(f"unknown backbone {kind!r}; use 'resnet' or 'resnet_vd'")
