"""PPM-FPN pixel decoder: res3/res4/res5 backbone features -> [E5, E4, E3], all `dim` channels (SPEC §2.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ConvNorm


class PyramidPoolingModule(nn.Module):
    """PSPNet pooling: avg-pool to 1,2,3,6 cells -> 1x1 conv + ReLU -> upsample; concat with the input -> 1x1 conv +
    ReLU."""

    def __init__(self, dim: int, branch_dim: int, sizes=(1, 2, 3, 6)):
        super().__init__()
        self.sizes = tuple(sizes)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(dim, branch_dim, 1)) for s in self.sizes
        )
        self.bottleneck = nn.Conv2d(dim + len(self.sizes) * branch_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        priors = [
            F.interpolate(F.relu(stage(x)), size=(h, w), mode="bilinear", align_corners=False) for stage in self.stages
        ]
        return F.relu(self.bottleneck(torch.cat([*priors, x], dim=1)))


class PPMFPN(nn.Module):
    """Lateral 1x1 convs (`adapter_k`, GN) and 3x3 output convs (`layer_k`, GN + ReLU) with a PPM on top of res5."""

    # registered in __init__ under the official names (`adapter_1.weight`, `layer_1.norm.weight`, ...)
    adapter_1: ConvNorm
    adapter_2: ConvNorm
    adapter_3: ConvNorm
    layer_1: ConvNorm
    layer_2: ConvNorm
    layer_3: ConvNorm

    def __init__(self, in_channels: dict[str, int], dim: int = 256, norm_groups: int = 32):
        super().__init__()
        for k, name in enumerate(("res3", "res4", "res5"), start=1):
            adapter = ConvNorm(in_channels[name], dim, 1, norm=nn.GroupNorm(norm_groups, dim))
            layer = ConvNorm(dim, dim, 3, norm=nn.GroupNorm(norm_groups, dim), relu=True)
            for conv in (adapter, layer):
                nn.init.kaiming_uniform_(conv.weight, a=1)  # c2_xavier_fill
            self.add_module(f"adapter_{k}", adapter)
            self.add_module(f"layer_{k}", layer)
        self.ppm = PyramidPoolingModule(dim, dim // 4)

    def forward(self, feats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        e5 = self.layer_3(self.ppm(self.adapter_3(feats["res5"])))  # (B, D, H/32, W/32)
        c4 = self.adapter_2(feats["res4"])
        e4 = self.layer_2(c4 + F.interpolate(e5, size=c4.shape[-2:], mode="bilinear", align_corners=False))  # H/16
        c3 = self.adapter_1(feats["res3"])
        e3 = self.layer_1(c3 + F.interpolate(e4, size=c3.shape[-2:], mode="bilinear", align_corners=False))  # H/8
        return [e5, e4, e3]
