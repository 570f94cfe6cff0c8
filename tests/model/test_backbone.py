"""Backbones (`fastinst.model.backbone`): output strides and channels per kind, official key names, FrozenBN, DCN.

The four kinds in use: detectron2's ResNet-50 and ResNet-101 (D1/D3 R50, D3 R101), FastInst's timm-style
ResNet-50-vd with deformable convs in res4/res5, and the demo's half-width ResNet-18 (trainable BN). Each runs once
on a 64x96 batch (a module-scoped fixture) and the tests read those outputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastinst.model.backbone import (
    DeformConv,
    FrozenBatchNorm2d,
    ResNet,
    ResNetVd,
    VdBottleneck,
    build_backbone,
)

KINDS = {
    "R50": ("resnet", 50, (False,) * 4, "FrozenBN", 64),
    "R101": ("resnet", 101, (False,) * 4, "FrozenBN", 64),
    "R50-vd-DCN": ("resnet_vd", 50, (False, False, True, True), "FrozenBN", 64),
    "demo-R18-half": ("resnet", 18, (False,) * 4, "BN", 32),  # fastinst.config._demo
}
CHANNELS = {  # res2..res5 (SPEC §2.1, §2.2; the demo: BasicBlocks of width 32, 64, 128, 256)
    "R50": (256, 512, 1024, 2048),
    "R101": (256, 512, 1024, 2048),
    "R50-vd-DCN": (256, 512, 1024, 2048),
    "demo-R18-half": (32, 64, 128, 256),
}
H, W = 64, 96


@pytest.fixture(scope="module")
def runs():
    """kind -> (eval backbone, its input, its output dict)."""
    torch.manual_seed(0)
    out = {}
    for kind, args in KINDS.items():
        net = build_backbone(*args).eval()
        x = torch.randn(2 if kind == "demo-R18-half" else 1, 3, H, W)
        with torch.no_grad():
            out[kind] = (net, x, net(x))
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_outputs_are_res3_to_res5_at_strides_8_16_32(runs, kind):
    net, x, feats = runs[kind]
    assert list(feats) == ["res3", "res4", "res5"]
    assert net.out_channels == dict(zip(("res2", "res3", "res4", "res5"), CHANNELS[kind], strict=True))
    for (name, f), stride, channels in zip(feats.items(), (8, 16, 32), CHANNELS[kind][1:], strict=True):
        assert f.shape == (x.shape[0], channels, H // stride, W // stride), name
        assert f.dtype == torch.float32 and torch.isfinite(f).all(), name
        assert (f >= 0).all(), name  # every stage ends in a ReLU


def test_batch_items_are_independent(runs):
    net, x, feats = runs["demo-R18-half"]  # eval-mode BN: no statistics shared across the batch
    with torch.no_grad():
        alone = net(x[1:])
    for name in feats:
        torch.testing.assert_close(alone[name][0], feats[name][1], rtol=1e-4, atol=1e-5)


# -- state-dict layout (SPEC §5.2, §5.3) -----------------------------------------------------------------------------

SPEC_KEYS = {
    "R50": {
        "stem.conv1.weight": (64, 3, 7, 7),
        "stem.conv1.norm.running_var": (64,),
        "res2.0.shortcut.weight": (256, 64, 1, 1),
        "res2.0.shortcut.norm.bias": (256,),
        "res2.1.conv1.weight": (64, 256, 1, 1),
        "res3.0.conv2.weight": (128, 128, 3, 3),
        "res4.5.conv3.weight": (1024, 256, 1, 1),
        "res5.0.shortcut.weight": (2048, 1024, 1, 1),
        "res5.2.conv3.norm.running_mean": (2048,),
    },
    "R101": {
        "stem.conv1.weight": (64, 3, 7, 7),
        "res4.22.conv1.weight": (256, 1024, 1, 1),
        "res4.22.conv3.norm.weight": (1024,),
        "res5.2.conv3.weight": (2048, 512, 1, 1),
    },
    "R50-vd-DCN": {
        "conv1.0.weight": (32, 3, 3, 3),
        "conv1.1.running_mean": (32,),
        "conv1.3.weight": (32, 32, 3, 3),
        "conv1.6.weight": (64, 32, 3, 3),
        "bn1.running_var": (64,),
        "layer1.0.downsample.1.weight": (256, 64, 1, 1),
        "layer1.0.downsample.2.weight": (256,),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.0.conv2.weight": (256, 256, 3, 3),  # the DeformConv's weight, no bias
        "layer3.0.conv2_offset.weight": (18, 256, 3, 3),
        "layer3.5.conv2_offset.bias": (18,),
        "layer4.2.conv2_offset.weight": (18, 512, 3, 3),
        "layer4.2.bn3.running_var": (2048,),
    },
    "demo-R18-half": {
        "stem.conv1.weight": (32, 3, 7, 7),
        "stem.conv1.norm.num_batches_tracked": (),
        "res2.0.conv1.weight": (32, 32, 3, 3),
        "res3.0.conv1.weight": (64, 32, 3, 3),
        "res3.0.shortcut.weight": (64, 32, 1, 1),
        "res5.1.conv2.norm.running_var": (256,),
    },
}
KEY_COUNTS = {"R50": 265, "R101": 520, "R50-vd-DCN": 293, "demo-R18-half": 120}  # SPEC §5.2/§5.3; demo by hand


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_follows_the_official_layout(runs, kind):
    sd = runs[kind][0].state_dict()
    for name, shape in SPEC_KEYS[kind].items():
        assert name in sd, name
        assert tuple(sd[name].shape) == shape, name
    assert len(sd) == KEY_COUNTS[kind]
    if kind != "demo-R18-half":  # FrozenBN: four buffers per norm, no num_batches_tracked; only convs train
        net = runs[kind][0]
        assert not any(k.endswith("num_batches_tracked") for k in sd)
        owners = {type(net.get_submodule(n.rsplit(".", 1)[0])) for n, _ in net.named_parameters()}
        assert owners <= {nn.Conv2d, DeformConv} | ({type(net.stem.conv1)} if kind != "R50-vd-DCN" else set())


def test_r50_shortcuts_and_vd_offsets_where_the_spec_puts_them(runs):
    sd = runs["R50"][0].state_dict()
    assert {k.split(".")[0] for k in sd if k.split(".")[1:3] == ["0", "shortcut"]} == {"res2", "res3", "res4", "res5"}
    assert not any(k.startswith(f"res{s}.1.shortcut") for s in (2, 3, 4, 5) for k in sd)  # only block 0 has one
    vd = runs["R50-vd-DCN"][0]
    offsets = {k.rsplit(".conv2_offset", 1)[0] for k in vd.state_dict() if "conv2_offset" in k}
    assert offsets == {f"layer3.{b}" for b in range(6)} | {f"layer4.{b}" for b in range(3)}  # res4 + res5, all blocks
    assert all(isinstance(vd.get_submodule(f"{name}.conv2"), DeformConv) for name in offsets)
    assert isinstance(vd.layer2[0].conv2, nn.Conv2d) and vd.layer2[0].conv2.stride == (2, 2)


def test_unknown_kinds_and_depths_are_refused():
    with pytest.raises(ValueError, match="backbone"):
        build_backbone("vgg", 50)
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth=42)
    with pytest.raises(ValueError, match="depth"):
        ResNetVd(depth=34)


# -- FrozenBN and the deformable conv --------------------------------------------------------------------------------


def test_frozen_bn_is_eval_batch_norm_and_starts_as_identity():
    torch.manual_seed(0)
    bn = FrozenBatchNorm2d(5)
    x = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(bn(x), x, rtol=0, atol=1e-6)  # running_var = 1 - eps: identity at init
    bn.weight.uniform_(0.5, 2)
    bn.bias.normal_()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    ref = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=1e-5)
    torch.testing.assert_close(bn(x), ref)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"] and not list(bn.parameters())
    # torchvision/timm BN files carry num_batches_tracked: loading drops it instead of failing
    bn.load_state_dict({**bn.state_dict(), "num_batches_tracked": torch.tensor(7)})


def test_deform_conv_with_zero_offsets_is_the_plain_conv():
    """DCN blocks start from a zero offset conv: the deformable conv is then the 3x3 conv (stride 1 or 2, pad 1)."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 7, 9)
    for stride in (1, 2):
        dcn = DeformConv(4, 6, stride)
        h, w = (7 - 1) // stride + 1, (9 - 1) // stride + 1
        out = dcn(x, torch.zeros(1, 18, h, w))
        torch.testing.assert_close(out, F.conv2d(x, dcn.weight, stride=stride, padding=1), rtol=1e-4, atol=1e-5)


def test_deform_conv_offset_channels_are_dy_then_dx():
    """Offset channel 2k is Δy and 2k+1 is Δx of tap k (SPEC §2.2). Δx = +1 everywhere moves every tap one pixel
    right: tap (i, j) of output (y, x) reads pixel (y + i - 1, x + j), which is the plain 3x3 conv of the image
    zero-padded by (left 0, right 2, top 1, bottom 1); Δy = +1 likewise is the padding (1, 1, 0, 2)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 5, 6)
    dcn = DeformConv(3, 2, 1)
    dx = torch.zeros(1, 18, 5, 6)
    dx[:, 1::2] = 1.0
    torch.testing.assert_close(dcn(x, dx), F.conv2d(F.pad(x, (0, 2, 1, 1)), dcn.weight), rtol=1e-4, atol=1e-5)
    dy = torch.zeros(1, 18, 5, 6)
    dy[:, 0::2] = 1.0
    torch.testing.assert_close(dcn(x, dy), F.conv2d(F.pad(x, (1, 1, 0, 2)), dcn.weight), rtol=1e-4, atol=1e-5)


def test_dcn_runs_in_float32_under_bf16_autocast():
    """Under CPU autocast (bf16) the deformable conv still computes in fp32, as the official casts it (SPEC §2.2)."""
    torch.manual_seed(0)
    block = VdBottleneck(16, 8, stride=2, deform=True, norm="FrozenBN").eval()
    nn.init.normal_(block.conv2_offset.weight, std=0.1)
    seen = []
    block.conv2.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(torch.randn(1, 16, 8, 8))
    assert seen == [torch.float32]
    assert out.shape == (1, 32, 4, 4) and torch.isfinite(out.float()).all()


def test_backbone_follows_the_model_dtype():
    net = build_backbone(*KINDS["demo-R18-half"]).eval().double()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert all(f.dtype == torch.float64 for f in feats.values())
