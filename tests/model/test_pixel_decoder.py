"""PPM-FPN pixel decoder (`fastinst.model.pixel_decoder`): shapes, official key names, and the SPEC §2.3 dataflow.

The dataflow test re-derives [E5, E4, E3] with plain `torch.nn.functional` calls on the module's own weights,
following SPEC §2.3 line by line (lateral 1x1 + GN, PPM on top of res5 with the pooled branches concatenated
*before* the input, bilinear top-down, 3x3 + GN + ReLU outputs), so a change in wiring or order shows up.
Small widths keep it fast; the official width is built once for the key names.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastinst.model.pixel_decoder import PPMFPN, PyramidPoolingModule

IN = {"res3": 16, "res4": 24, "res5": 40}
DIM, GROUPS = 32, 8


def _feats(batch: int = 2, h5: int = 6, w5: int = 8) -> dict[str, torch.Tensor]:
    """Backbone-like inputs for an image of (32·h5)x(32·w5): res3/res4/res5 at strides 8/16/32."""
    g = torch.Generator().manual_seed(0)
    return {
        name: torch.randn(batch, c, h5 * s, w5 * s, generator=g).relu()
        for (name, c), s in zip(IN.items(), (4, 2, 1), strict=True)
    }


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return PPMFPN(IN, DIM, norm_groups=GROUPS).eval()


def test_outputs_e5_e4_e3_low_to_high_resolution(decoder):
    feats = _feats()
    with torch.no_grad():
        e5, e4, e3 = decoder(feats)
    assert e5.shape == (2, DIM, 6, 8) and e4.shape == (2, DIM, 12, 16) and e3.shape == (2, DIM, 24, 32)
    for e in (e5, e4, e3):
        assert e.dtype == torch.float32 and torch.isfinite(e).all() and (e >= 0).all()  # ReLU outputs


def _conv_gn(x, conv, relu: bool):
    y = F.conv2d(x, conv.weight, conv.bias, padding=conv.kernel_size[0] // 2)
    y = F.group_norm(y, conv.norm.num_groups, conv.norm.weight, conv.norm.bias, conv.norm.eps)
    return y.relu() if relu else y


def _ppm(x, ppm):
    h, w = x.shape[-2:]
    priors = []
    for size, stage in zip((1, 2, 3, 6), ppm.stages, strict=True):
        pooled = F.adaptive_avg_pool2d(x, size)
        branch = F.conv2d(pooled, stage[1].weight, stage[1].bias).relu()
        priors.append(F.interpolate(branch, size=(h, w), mode="bilinear", align_corners=False))
    return F.conv2d(torch.cat([*priors, x], 1), ppm.bottleneck.weight, ppm.bottleneck.bias).relu()


def test_dataflow_matches_the_spec():
    torch.manual_seed(1)
    d = PPMFPN(IN, DIM, norm_groups=GROUPS).eval()
    for p in d.parameters():  # away from the init (GN identity, zero biases) so every term matters
        p.data.normal_(0, 0.2)
    feats = _feats()
    with torch.no_grad():
        got = d(feats)
        e5 = _conv_gn(_ppm(_conv_gn(feats["res5"], d.adapter_3, False), d.ppm), d.layer_3, True)
        c4 = _conv_gn(feats["res4"], d.adapter_2, False)
        e4 = _conv_gn(c4 + F.interpolate(e5, size=c4.shape[-2:], mode="bilinear", align_corners=False), d.layer_2, True)
        c3 = _conv_gn(feats["res3"], d.adapter_1, False)
        e3 = _conv_gn(c3 + F.interpolate(e4, size=c3.shape[-2:], mode="bilinear", align_corners=False), d.layer_1, True)
    for name, a, b in zip(("E5", "E4", "E3"), got, (e5, e4, e3), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_top_down_routing(decoder):
    """res5 reaches every output (through the top-down path); res3 only E3; res4 E4 and E3."""
    feats = _feats(batch=1)
    with torch.no_grad():
        base = decoder(feats)
        for name, changed in (
            ("res5", (True, True, True)),
            ("res4", (False, True, True)),
            ("res3", (False, False, True)),
        ):
            other = dict(feats)
            other[name] = feats[name] + torch.rand_like(feats[name])
            out = decoder(other)
            assert tuple(not torch.equal(a, b) for a, b in zip(out, base, strict=True)) == changed, name


def test_ppm_pools_to_1_2_3_6_and_keeps_size():
    ppm = PyramidPoolingModule(8, 2)
    assert ppm.sizes == (1, 2, 3, 6)
    assert [stage[0].output_size for stage in ppm.stages] == [1, 2, 3, 6]
    assert ppm.bottleneck.in_channels == 8 + 4 * 2 and ppm.bottleneck.out_channels == 8
    assert ppm(torch.randn(1, 8, 5, 7)).shape == (1, 8, 5, 7)


def test_official_key_names_and_shapes():
    """SPEC §5.4: 28 pixel-decoder keys for the R50/R101 channels at width 256, GN(32), no conv biases but the PPM's."""
    sd = PPMFPN({"res3": 512, "res4": 1024, "res5": 2048}, 256).state_dict()
    expected = {}
    for k, cin in ((1, 512), (2, 1024), (3, 2048)):
        expected[f"adapter_{k}.weight"] = (256, cin, 1, 1)
        expected[f"layer_{k}.weight"] = (256, 256, 3, 3)
        for conv in ("adapter", "layer"):
            expected[f"{conv}_{k}.norm.weight"] = expected[f"{conv}_{k}.norm.bias"] = (256,)
    for i in range(4):
        expected[f"ppm.stages.{i}.1.weight"], expected[f"ppm.stages.{i}.1.bias"] = (64, 256, 1, 1), (64,)
    expected["ppm.bottleneck.weight"], expected["ppm.bottleneck.bias"] = (256, 512, 1, 1), (256,)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert len(sd) == 28


def test_group_norm_groups(decoder):
    assert PPMFPN({"res3": 512, "res4": 1024, "res5": 2048}, 256).layer_1.norm.num_groups == 32  # official GN(32, 256)
    assert all(getattr(decoder, f"{c}_{k}").norm.num_groups == GROUPS for c in ("adapter", "layer") for k in (1, 2, 3))
