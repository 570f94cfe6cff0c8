"""`optimize_for_inference`: BatchNorm folding (and channels_last) leaves the network's outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastinst
from fastinst.export import InferenceNet
from fastinst.model.backbone import FrozenBatchNorm2d
from fastinst.model.fuse import optimize_for_inference


def _with_random_norms(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = fastinst.build_model(name).eval()
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
        if hasattr(m, "conv2_offset"):
            nn.init.normal_(m.conv2_offset.weight, std=0.02)
    return model


@pytest.mark.parametrize("name", ["fastinst-demo", "fastinst-d1-r50vd-dcn"])
def test_fused_equals_unfused(name):
    model = _with_random_norms(name)
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        expected = InferenceNet(model)(x)
        for channels_last in (False, True):
            fused = optimize_for_inference(model, channels_last=channels_last)
            kept = [m for m in fused.backbone.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))]
            # only the BNs after deformable convs stay (9 in R50-vd-dcn's layer3 + layer4)
            assert len(kept) == (9 if "dcn" in name else 0)
            got = InferenceNet(fused)(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
            for e, g in zip(expected, got, strict=True):
                torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())
    assert any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in model.modules())  # original untouched


def test_fused_d1_r50_has_no_frozen_bn():
    fused = optimize_for_inference(fastinst.build_model("fastinst-d1-r50"))
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fused.modules())
    assert not fused.training


def test_auto_precision_per_device(monkeypatch):
    import fastinst.model.fuse as fuse

    monkeypatch.setattr(fuse, "native_bf16_cpu", lambda: False)
    assert fuse.inference_dtype("auto", "cpu") == "fp32"
    monkeypatch.setattr(fuse, "native_bf16_cpu", lambda: True)
    assert fuse.inference_dtype("auto", "cpu") == "bf16"
    assert fuse.inference_dtype("auto", "cuda") == "fp16"
    assert fuse.inference_dtype("auto", "mps") == "fp32"
    assert fuse.inference_dtype("fp16", "cpu") == "bf16"  # CPU autocast's half type
    assert fuse.inference_dtype("fp32", "cuda") == "fp32"
    with pytest.raises(ValueError, match="int8"):
        fuse.inference_dtype("int8", "cpu")


def test_low_precision_casts_convs_and_linears_once_and_keeps_norms_fp32():
    from fastinst.model.backbone import ConvNorm

    model = fastinst.build_model("fastinst-demo")
    fast = optimize_for_inference(model, channels_last=True, dtype=torch.bfloat16)
    for m in fast.modules():
        own = list(m.parameters(recurse=False))
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.Embedding, nn.MultiheadAttention)):
            assert all(p.dtype == torch.float32 for p in m.parameters()), type(m).__name__
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(
            m, nn.modules.linear.NonDynamicallyQuantizableLinear
        ):
            assert own and all(p.dtype == torch.bfloat16 for p in own), type(m).__name__
    assert any(isinstance(m, ConvNorm) and isinstance(m.norm, nn.GroupNorm) for m in fast.modules())
    assert fast.pixel_mean.dtype == fast.pixel_std.dtype == torch.float32  # normalisation stays exact
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the original is untouched


@pytest.mark.parametrize(
    "amx, avx512_bf16, expected",
    [(True, True, ("bf16", "auto: AMX")), (False, True, ("bf16", "auto: AVX512-BF16")),
     (False, False, ("fp32", "auto: no bf16 hardware"))],
    ids=["amx", "zen4", "cascade_lake"],
)  # fmt: skip
def test_auto_on_each_cpu_kind(monkeypatch, amx, avx512_bf16, expected):
    """Every CPU kind seen (Intel AMX, AMD Zen 4/5 with AVX512-BF16, Cascade Lake without bf16 hardware), the probe
    forced: auto picks bf16 where bf16 is hardware (measured faster on both kinds that have it), fp32 elsewhere."""
    import fastinst.model.fuse as fuse

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert (fuse.inference_dtype("auto", "cpu"), fuse.dtype_reason("auto", "cpu")) == expected
    assert fuse.dtype_reason("bf16", "cpu") == "" and fuse.dtype_reason("fp16", "cpu") == "fp16 asked: CPUs run bf16"


@pytest.mark.parametrize("name", ["fastinst-demo", "fastinst-d1-r50", "fastinst-d1-r50vd-dcn"])
def test_bf16_on_cpu_fuses_every_resnet_block(monkeypatch, name):
    """bf16 on a CPU: every block (basic, bottleneck, ResNet-vd with deformable convs) runs its ReLUs and residual
    add inside oneDNN's convolutions, with the same state_dict, and each fused block gives what the plain block it
    replaced gives in bf16. fp32 and CPUs without the fused op keep the plain blocks (the branch forced both ways)."""
    import fastinst.model.fuse as fuse

    model = _with_random_norms(name)
    blocks = [m for m in model.backbone.modules() if isinstance(m, fuse.Block)]
    fused = optimize_for_inference(model, channels_last=True, dtype=torch.bfloat16)
    stems = [m for m in model.backbone.modules() if isinstance(m, fuse.Stem)]  # ResNet-vd's stem is its own
    assert sum(isinstance(m, fuse.FusedBlock) for m in fused.modules()) == len(blocks) > 0
    assert (
        sum(isinstance(m, fuse.FusedStem) for m in fused.modules()) == len(stems) == (name != "fastinst-d1-r50vd-dcn")
    )
    monkeypatch.setattr(fuse, "pointwise_fusion_available", lambda model: False)
    plain = optimize_for_inference(model, channels_last=True, dtype=torch.bfloat16)
    assert not any(isinstance(m, fuse.FusedBlock | fuse.FusedStem) for m in plain.modules())
    assert list(fused.state_dict()) == list(plain.state_dict())
    monkeypatch.undo()
    folded_only = optimize_for_inference(model)  # no inference dtype: plain blocks (a model bound for a GPU)
    assert not any(isinstance(m, fuse.FusedBlock | fuse.FusedStem) for m in folded_only.modules())
    nchw = optimize_for_inference(model, dtype=torch.bfloat16)  # NCHW: plain blocks, which run in bf16 there
    assert not any(isinstance(m, fuse.FusedBlock | fuse.FusedStem) for m in nchw.modules())
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        assert all(o.isfinite().all() for o in InferenceNet(nchw)(torch.randn(1, 3, 64, 96)))

    plain_blocks = dict(plain.named_modules())
    torch.manual_seed(1)
    for where, block in fused.named_modules():  # each block and stem against the plain one it replaced, in bf16
        if isinstance(block, fuse.FusedStem):
            x = torch.randn(1, 3, 48, 80).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
                got, ref = block(x).float(), plain_blocks[where](x).float()
            assert got.shape == ref.shape == (1, block.conv1.out_channels, 12, 20) and got.min() >= 0, where
            torch.testing.assert_close(got, ref, rtol=0.02, atol=0.02 * ref.abs().max().item(), msg=where)
            continue
        if not isinstance(block, fuse.FusedBlock):
            continue
        x = torch.randn(1, block.conv1.in_channels, 24, 40).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            got, ref = block(x).float(), plain_blocks[where](x).float()
        assert got.shape == ref.shape and got.min() >= 0, where
        torch.testing.assert_close(got, ref, rtol=0.02, atol=0.02 * ref.abs().max().item(), msg=where)


@pytest.mark.parametrize("name", ["fastinst-demo", "fastinst-d1-r50vd-dcn"])
def test_fp32_on_cpu_fuses_and_gives_the_plain_networks_outputs(monkeypatch, name):
    """The Predictor's fp32 on a CPU fuses the blocks and stem too (the default on CPUs without bf16 hardware); the
    whole network's outputs are the plain folded network's up to fp32 rounding (bit-identical where oneDNN runs the
    fused conv with the same kernel, as on the CPUs measured)."""
    import fastinst.model.fuse as fuse

    model = _with_random_norms(name)
    fused = optimize_for_inference(model, channels_last=True, dtype=torch.float32)
    blocks = [m for m in model.backbone.modules() if isinstance(m, fuse.Block)]
    assert sum(isinstance(m, fuse.FusedBlock) for m in fused.modules()) == len(blocks) > 0
    assert all(p.dtype == torch.float32 for p in fused.parameters())
    monkeypatch.setattr(fuse, "pointwise_fusion_available", lambda model: False)
    plain = optimize_for_inference(model, channels_last=True, dtype=torch.float32)
    assert not any(isinstance(m, fuse.FusedBlock | fuse.FusedStem) for m in plain.modules())
    x = torch.randn(1, 3, 128, 160).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for got, ref in zip(InferenceNet(fused)(x), InferenceNet(plain)(x), strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("failure", ["raises", "wrong answer"])
def test_plain_blocks_where_the_fused_convolutions_fail(monkeypatch, failure):
    """A PyTorch whose oneDNN lacks the fused convolutions (or gets them wrong) keeps the plain blocks, found by a
    probe once per process, instead of failing in the middle of a prediction; here they work, in both precisions."""
    import fastinst.model.fuse as fuse

    fuse.fused_ops_work.cache_clear()
    assert fuse.fused_ops_work(torch.float32) and fuse.fused_ops_work(torch.bfloat16)
    real = fuse.fused_conv

    def broken(conv, x, relu, residual=None):
        if failure == "raises":
            raise RuntimeError("no oneDNN kernel for this")
        return torch.zeros_like(real(conv, x, relu, residual))

    monkeypatch.setattr(fuse, "fused_conv", broken)
    fuse.fused_ops_work.cache_clear()
    try:
        assert not fuse.fused_ops_work(torch.float32) and not fuse.fused_ops_work(torch.bfloat16)
        model = _with_random_norms("fastinst-demo")
        plain = optimize_for_inference(model, channels_last=True, dtype=torch.float32)
        assert not any(isinstance(m, fuse.FusedBlock | fuse.FusedStem) for m in plain.modules())
        x = torch.randn(1, 3, 64, 96).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            assert all(o.isfinite().all() for o in InferenceNet(plain)(x))
    finally:
        monkeypatch.undo()
        fuse.fused_ops_work.cache_clear()


def test_weights_packed_once_per_input_shape_and_never_stale(monkeypatch):
    """Fused convolutions take their weights in oneDNN's layout, packed once for the input shape they meet
    (`fuse.packed_weight`): the network's outputs are the ones with the plain weights at every size, a new size packs
    again, and a weight changed in place (a state dict loaded into the prepared model) is packed again too."""
    import fastinst.model.fuse as fuse

    if not fuse.pointwise_fusion_available(nn.Conv2d(1, 1, 1)):
        pytest.skip("oneDNN's fused convolutions are not available on this build")
    fused = optimize_for_inference(_with_random_norms("fastinst-demo"), channels_last=True, dtype=torch.float32)
    stem = next(m for m in fused.modules() if isinstance(m, fuse.FusedStem)).conv1
    net = InferenceNet(fused)

    def run(h: int, w: int, packed: bool = True) -> tuple[torch.Tensor, ...]:
        if not packed:
            monkeypatch.setattr(fuse, "packed_weight", lambda conv, x: conv.weight)
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h)).contiguous(
            memory_format=torch.channels_last
        )
        with torch.inference_mode():
            out = net(x)
        monkeypatch.undo()
        return out

    for h, w in [(128, 160), (96, 224), (128, 160)]:  # back and forth between sizes
        for got, ref in zip(run(h, w), run(h, w, packed=False), strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
        assert fuse._PACKED[stem][0][0] == (1, 3, h, w)  # the stem's weight packed for this size
    with torch.no_grad():
        stem.weight.mul_(-1.0)
    for got, ref in zip(run(128, 160), run(128, 160, packed=False), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
