"""ONNX export: the export-only stand-ins, onnxruntime parity for every variant, OnnxModel vs PyTorch, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import deform_conv2d

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import fastinst
from fastinst.cli import main
from fastinst.config import PUBLISHED
from fastinst.data.synthetic import render_sample
from fastinst.errors import FastInstError
from fastinst.export import (
    ExportAdaptiveAvgPool2d,
    ExportDeformConv,
    OnnxModel,
    export_onnx,
    verify_onnx,
)
from fastinst.model.backbone import DeformConv

SIZE = (128, 160)


def _model(name: str) -> nn.Module:
    """Random weights; DCN offset convs get non-zero weights so the deformable sampling is really exercised."""
    torch.manual_seed(0)
    model = fastinst.build_model(name).eval()
    for m in model.modules():
        if hasattr(m, "conv2_offset"):
            nn.init.normal_(m.conv2_offset.weight, std=0.02)
            nn.init.normal_(m.conv2_offset.bias, std=0.5)
    return model


def _batch(image: np.ndarray, height: int | None = None, width: int | None = None) -> list[dict]:
    return [
        {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": height or image.shape[0],
            "width": width or image.shape[1],
        }
    ]


@pytest.mark.parametrize("n", [(4, 5), (7, 9), (12, 12), (2, 3)])
def test_adaptive_pool_standin_equals_torch(n):
    x = torch.randn(2, 3, *n)
    for s in (1, 2, 3, 6):
        torch.testing.assert_close(ExportAdaptiveAvgPool2d(s)(x), nn.AdaptiveAvgPool2d(s)(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
def test_deform_standin_equals_torchvision(stride):
    torch.manual_seed(1)
    conv = DeformConv(5, 4, stride)
    x = torch.randn(2, 5, 9, 11)
    ho, wo = (9 - 1) // stride + 1, (11 - 1) // stride + 1
    offset = torch.randn(2, 18, ho, wo) * 3  # many taps land between pixels and outside the image
    expected = deform_conv2d(x, offset, conv.weight, stride=stride, padding=1)
    torch.testing.assert_close(ExportDeformConv(conv)(x, offset), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", PUBLISHED)
def test_export_matches_pytorch(name, tmp_path):
    model = _model(name)
    path = export_onnx(model, tmp_path / "m.onnx", size=SIZE)
    image = render_sample(0, "val", 1, 256)[0]
    assert verify_onnx(model, path, image) < 1e-3


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    model = _model("fastinst-demo")
    root = tmp_path_factory.mktemp("onnx")
    fixed = export_onnx(model, root / "fixed.onnx", size=SIZE, opset=18)
    dynamic = export_onnx(model, root / "dynamic.onnx", size=SIZE, dynamic=True)
    return model, fixed, dynamic


def _same_instances(a: dict, b: dict) -> None:
    assert torch.equal(a["queries"], b["queries"]) and torch.equal(a["labels"], b["labels"])
    torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)
    assert a["masks"].shape == b["masks"].shape
    assert (a["masks"] != b["masks"]).float().mean() < 1e-4  # a pixel at exactly p = 0.5 may flip


def test_onnx_model_gives_the_pytorch_instances(demo):
    model, fixed, dynamic = demo
    image = render_sample(3, "val", 0, 256)[0][: SIZE[0], : SIZE[1]]
    batch = _batch(image, 200, 250)  # masks come back at the original size
    with torch.no_grad():
        expected = model(batch)[0]
    for path in (fixed, dynamic):
        got = OnnxModel(path)(batch)[0]
        assert got["masks"].shape[1:] == (200, 250)
        _same_instances(expected, got)


def test_dynamic_file_takes_other_sizes(demo):
    model, _, dynamic = demo
    image = render_sample(4, "val", 0, 256)[0][:170, :230]  # padded to 192x256
    with torch.no_grad():
        expected = model(_batch(image))[0]
    _same_instances(expected, OnnxModel(dynamic)(_batch(image))[0])


def test_fixed_file_pads_smaller_and_rejects_larger_images(demo):
    _, fixed, _ = demo
    onnx_model = OnnxModel(fixed)
    small = render_sample(5, "val", 0, 256)[0][:90, :100]
    assert onnx_model(_batch(small))[0]["masks"].shape[1:] == (90, 100)
    with pytest.raises(FastInstError, match="does not fit"):
        onnx_model(_batch(render_sample(5, "val", 0, 256)[0]))


def test_export_rejects_bad_sizes_and_opsets(demo, tmp_path):
    model = demo[0]
    with pytest.raises(FastInstError, match="multiples of 32"):
        export_onnx(model, tmp_path / "x.onnx", size=(100, 160))
    with pytest.raises(FastInstError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", size=SIZE, opset=11)


def test_verify_fails_on_a_different_model(demo):
    _, fixed, _ = demo
    other = _model("fastinst-demo")
    with torch.no_grad():
        other.sem_seg_head.predictor.class_embed_layers[-1].layers[-1].bias.add_(1.0)
    with pytest.raises(FastInstError, match="disagree"):
        verify_onnx(other, fixed)


def test_export_command(demo, tmp_path, capsys):
    weights = tmp_path / "demo.pth"
    torch.save({"model": demo[0].state_dict()}, weights)
    out = tmp_path / "demo.onnx"
    assert (
        main(
            [
                "export",
                "--model",
                "fastinst-demo",
                "--weights",
                str(weights),
                "--size",
                "128",
                "160",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert out.is_file() and "max abs diff" in text
    assert main(["export", "--model", "fastinst-demo", "--size", "100", "160", "--output", str(out)]) == 2
    assert "multiples of 32" in capsys.readouterr().err
