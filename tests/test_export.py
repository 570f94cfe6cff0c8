"""ONNX export: the export-only stand-ins, onnxruntime parity for every variant (torch's dynamo exporter), the
opset-17 fallback, the metadata, OnnxModel's inference contract against FastInst's (detect, __call__, classes), the CLI.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import deform_conv2d

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import onnx

import fastinst
from fastinst.cli import main
from fastinst.config import PUBLISHED, get_config
from fastinst.data.synthetic import render_sample
from fastinst.engine.predictor import Predictor
from fastinst.errors import FastInstError
from fastinst.export import (
    ExportAdaptiveAvgPool2d,
    OnnxModel,
    export_onnx,
    verify_onnx,
)
from fastinst.model.backbone import DeformConv
from fastinst.model.fastinst import FastInst
from fastinst.runtimes import pad_batch

SIZE = (128, 160)


def _init(model: nn.Module) -> nn.Module:
    """DCN offset convs get non-zero weights so the deformable sampling is really exercised."""
    for m in model.modules():
        if hasattr(m, "conv2_offset"):
            nn.init.normal_(m.conv2_offset.weight, std=0.02)
            nn.init.normal_(m.conv2_offset.bias, std=0.5)
    return model.eval()


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _init(fastinst.build_model(name))


def _batch(image: np.ndarray, height: int | None = None, width: int | None = None) -> list[dict]:
    return [
        {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": height or image.shape[0],
            "width": width or image.shape[1],
        }
    ]


def _opset(path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def _metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


# ---------------------------------------------------------------------------------------------------------------------
# Stand-ins
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [(4, 5), (7, 9), (12, 12), (2, 3)])
def test_adaptive_pool_standin_equals_torch(n):
    x = torch.randn(2, 3, *n)
    for s in (1, 2, 3, 6):
        torch.testing.assert_close(ExportAdaptiveAvgPool2d(s)(x), nn.AdaptiveAvgPool2d(s)(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("stride", "size"), [(1, (9, 11)), (2, (9, 11)), (1, (1, 7)), (2, (6, 1))])
def test_inference_deform_conv_equals_torchvision(stride, size):
    """Without autograd DeformConv is grid_sample + matmul (fast, exportable): torchvision's numbers, at any size
    (one-pixel-wide maps included: a thin image's stride-32 map)."""
    torch.manual_seed(1)
    conv = DeformConv(5, 4, stride)
    h, w = size
    x = torch.randn(2, 5, h, w)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    offset = torch.randn(2, 18, ho, wo) * 3  # many taps land between pixels and outside the image
    expected = deform_conv2d(x, offset, conv.weight, stride=stride, padding=1)
    assert torch.equal(conv(x, offset), expected)  # autograd on: torchvision's op itself
    with torch.no_grad():
        torch.testing.assert_close(conv(x, offset), expected, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the matmul in bf16, the sampling in fp32
            low = conv(x, offset)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, expected, rtol=0.05, atol=0.05 * float(expected.detach().abs().max()))


# ---------------------------------------------------------------------------------------------------------------------
# Export of every variant
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PUBLISHED)
def test_export_matches_pytorch(name, tmp_path):
    model = _model(name)
    path = export_onnx(model, tmp_path / "m.onnx", size=SIZE)
    assert _opset(path) == 18 and _metadata(path)["fastinst.exporter"] == "dynamo"
    image = render_sample(0, "val", 1, 256)[0]
    assert verify_onnx(model, path, image) < 1e-3


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    model = _model("fastinst-demo")
    root = tmp_path_factory.mktemp("onnx")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fixed = export_onnx(model, root / "fixed.onnx", size=SIZE)
        dynamic = export_onnx(model, root / "dynamic.onnx", size=SIZE, dynamic=True)
    return model, fixed, dynamic, [f"{w.category.__name__}: {w.message}" for w in seen]


def test_dynamo_export_raises_no_warnings(demo):
    # e.g. "Exporting a model while it is in training mode" came from an export wrapper left in training mode
    assert demo[3] == []


def test_file_metadata(demo):
    model, fixed, dynamic, _ = demo
    for path, size in ((fixed, f"{SIZE[0]},{SIZE[1]}"), (dynamic, "dynamic")):
        meta = _metadata(path)
        assert meta["fastinst.size"] == size and meta["fastinst.exporter"] == "dynamo"
        assert json.loads(meta["fastinst.config"])["model"]["num_classes"] == model.num_classes
        assert json.loads(meta["fastinst.names"]) == model.names
        assert json.loads(meta["fastinst.category_ids"]) == model.category_ids
    graph = onnx.load(str(dynamic)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))


def _same_instances(a: dict, b: dict) -> None:
    assert torch.equal(a["queries"], b["queries"]) and torch.equal(a["labels"], b["labels"])
    torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)
    assert a["masks"].shape == b["masks"].shape
    assert (a["masks"] != b["masks"]).float().mean() < 1e-4  # a pixel at exactly p = 0.5 may flip


def test_onnx_model_gives_the_pytorch_instances(demo):
    model, fixed, dynamic, _ = demo
    image = render_sample(3, "val", 0, 256)[0][: SIZE[0], : SIZE[1]]
    batch = _batch(image, 200, 250)  # masks come back at the original size
    with torch.no_grad():
        expected = model(batch)[0]
        cut = model(batch, score_threshold=float(expected["scores"][5]), max_detections=10)[0]
    assert 0 < len(cut["scores"]) < len(expected["scores"])
    for path in (fixed, dynamic):
        onnx_model = OnnxModel(path)
        got = onnx_model(batch)[0]
        assert got["masks"].shape[1:] == (200, 250)
        _same_instances(expected, got)
        _same_instances(cut, onnx_model(batch, score_threshold=float(expected["scores"][5]), max_detections=10)[0])


def test_dynamic_file_takes_other_sizes_and_batches(demo):
    model, _, dynamic, _ = demo
    onnx_model = OnnxModel(dynamic)
    scene = render_sample(4, "val", 0, 256)[0]
    # 170x230 pads to 192x256; 40x30 pads to 64x32, whose 4 x 2 stride-16 cells are fewer than the demo's 16
    # queries: the graph's top-k takes min(queries, cells) as PyTorch does (the traced example had 80 cells)
    for crop in ((170, 230), (40, 30)):
        image = scene[: crop[0], : crop[1]]
        with torch.no_grad():
            expected = model(_batch(image))[0]
        _same_instances(expected, onnx_model(_batch(image))[0])
    assert len(expected["queries"]) == 8 * model.num_classes and int(expected["queries"].max()) == 7
    two = _batch(scene[:170, :230]) + _batch(scene[:90, :250])  # one batch of two sizes, padded to 192x256
    with torch.no_grad():
        expected_two = model(two)
    for a, b in zip(expected_two, onnx_model(two), strict=True):
        _same_instances(a, b)


def test_one_preprocessing_for_pytorch_and_onnx(demo):
    """FastInst.preprocess and the ONNX side share `normalize_and_pad`: bit-identical batches."""
    model = demo[0]
    rng = np.random.default_rng(0)
    shapes = ((50, 70), (33, 101))
    batch = [{"image": torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))} for h, w in shapes]
    images, sizes = model.preprocess(batch)
    assert images.shape == (2, 3, 64, 128) and sizes == list(shapes)
    mean = torch.tensor(model.cfg.model.pixel_mean).view(3, 1, 1)
    std = torch.tensor(model.cfg.model.pixel_std).view(3, 1, 1)
    for i, (h, w) in enumerate(shapes):
        assert torch.equal(images[i, :, :h, :w], (batch[i]["image"].float() - mean) / std)
        assert not images[i, :, h:].any() and not images[i, :, :, w:].any()
    ours, ours_sizes = pad_batch(model.cfg, batch)
    assert torch.equal(ours, images) and ours_sizes == sizes
    fixed, _ = pad_batch(model.cfg, batch, (96, 160))  # a fixed-size file's input: more zeros, same pixels
    assert fixed.shape == (2, 3, 96, 160) and torch.equal(fixed[..., :64, :128], images)
    assert not fixed[..., 64:, :].any() and not fixed[..., 128:].any()


def test_fixed_file_pads_smaller_and_rejects_larger_images(demo):
    _, fixed, _, _ = demo
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


def test_opset_17_falls_back_to_the_torchscript_exporter_with_a_warning(demo, tmp_path):
    model = demo[0]
    with pytest.warns(UserWarning, match="legacy TorchScript exporter"):
        path = export_onnx(model, tmp_path / "o17.onnx", size=SIZE, opset=17)
    assert _opset(path) == 17 and _metadata(path)["fastinst.exporter"] == "torchscript"
    assert verify_onnx(model, path) < 1e-3


def test_opset_20(demo, tmp_path):
    model = demo[0]
    path = export_onnx(model, tmp_path / "o20.onnx", size=SIZE, opset=20)
    assert _opset(path) == 20
    assert verify_onnx(model, path) < 1e-3


@pytest.mark.parametrize("opset", [18, 17])
def test_a_prepared_model_exports_as_its_plain_copy(opset, tmp_path):
    """The Predictor's fp32 model runs its ResNet blocks as oneDNN fused convolutions on a CPU (`fuse.FusedBlock`),
    which no exporter can write out; under an exporter (dynamo, and the TorchScript one of opset 17) they run as the
    plain ops, so `export_onnx(predictor.model)` works and gives the prepared model's outputs."""
    from fastinst.model.fuse import FusedBlock, FusedStem

    prepared = Predictor(_model("fastinst-demo"), "fp32").model
    if not any(isinstance(m, FusedBlock | FusedStem) for m in prepared.modules()):
        pytest.skip("oneDNN's fused convolutions are not available on this build")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opset 17's fallback warning (its own test above)
        path = export_onnx(prepared, tmp_path / "prepared.onnx", size=SIZE, opset=opset)
    assert verify_onnx(prepared, path, render_sample(0, "val", 1, 256)[0]) < 1e-3


def test_verify_fails_on_a_different_model(demo):
    _, fixed, _, _ = demo
    other = _model("fastinst-demo")
    with torch.no_grad():
        other.sem_seg_head.predictor.class_embed_layers[-1].layers[-1].bias.add_(1.0)
    with pytest.raises(FastInstError, match="disagree"):
        verify_onnx(other, fixed)


# ---------------------------------------------------------------------------------------------------------------------
# OnnxModel has the model's inference contract: a 2-class model with its own names and ids
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    cfg = get_config("fastinst-demo")
    cfg.model.num_classes = 2
    cfg.model.class_names = ("dog", "cat")
    cfg.model.category_ids = (3, 7)
    torch.manual_seed(3)
    model = FastInst(cfg).eval()
    with torch.no_grad():  # spread the class scores so that a threshold keeps some pairs and drops others
        model.sem_seg_head.predictor.class_embed_layers[-1].layers[-1].bias.copy_(torch.tensor([1.5, 0.5, 0.0]))
    path = export_onnx(model, tmp_path_factory.mktemp("two") / "two.onnx", dynamic=True)
    images = [render_sample(7, "val", 0, 320)[0], render_sample(8, "val", 0, 320)[0][:180, :300]]
    return model, path, images


def _threshold(scores: torch.Tensor) -> float:
    """A score threshold half-way down the scores, in a gap of more than 1e-3 (no score lies near it)."""
    ranked = torch.sort(scores, descending=True).values
    gaps = torch.nonzero(ranked[:-1] - ranked[1:] > 1e-3).flatten()
    cut = int(gaps[len(gaps) // 2])
    return float(ranked[cut] + ranked[cut + 1]) / 2


def _by_pair(found: dict) -> dict[tuple[int, int], int]:
    pairs = zip(found["queries"].tolist(), found["labels"].tolist(), strict=True)
    return {pair: i for i, pair in enumerate(pairs)}


def _same_detections(a: dict, b: dict) -> None:
    """Same (query, class) pairs; per pair scores within 1e-4 and masks with IoU >= 0.99."""
    pa, pb = _by_pair(a), _by_pair(b)
    assert set(pa) == set(pb) and len(pa) == len(a["scores"])
    ia, ib = list(pa.values()), [pb[p] for p in pa]
    assert torch.allclose(a["scores"][ia], b["scores"][ib], atol=1e-4)
    ma, mb = a["masks"][ia], b["masks"][ib]
    inter = (ma & mb).flatten(1).sum(1).float()
    union = (ma | mb).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    assert iou.min() >= 0.99


def test_onnx_model_carries_class_names_and_ids(two_classes):
    model, path, _ = two_classes
    onnx_model = OnnxModel(path)
    assert onnx_model.num_classes == 2 and onnx_model.cfg.model.num_classes == 2
    assert onnx_model.names == model.names == ["dog", "cat"]
    assert onnx_model.category_ids == model.category_ids == [3, 7]


def test_onnx_detect_equals_pytorch_detect(two_classes):
    model, path, images = two_classes
    onnx_model = OnnxModel(path)
    everything = model.detect(images)
    for a, b in zip(everything, onnx_model.detect(images), strict=True):
        assert a["masks"].shape[1:] == b["masks"].shape[1:]
        _same_detections(a, b)
    threshold = _threshold(everything[0]["scores"])
    kept = model.detect(images, score_threshold=threshold, max_detections=50)
    assert 0 < len(kept[0]["scores"]) < len(everything[0]["scores"])
    for a, b in zip(kept, onnx_model.detect(images, score_threshold=threshold, max_detections=50), strict=True):
        assert bool((b["scores"] >= threshold).all()) and len(b["scores"]) <= 50
        _same_detections(a, b)


def test_predictor_runs_an_onnx_model_unchanged(two_classes):
    model, path, images = two_classes
    ours, theirs = Predictor(model, dtype="fp32"), Predictor(OnnxModel(path))  # the export is fp32 on every CPU
    assert theirs.names == ["dog", "cat"] and theirs.category_ids == [3, 7]
    threshold = _threshold(model.detect(images[:1])[0]["scores"])
    expected, got = ours.predict(images, score_threshold=threshold), theirs.predict(images, score_threshold=threshold)
    for a, b in zip(expected, got, strict=True):
        assert np.array_equal(a.labels, b.labels) and len(a) > 0
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        assert (a.masks != b.masks).mean() < 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


def test_export_command(demo, tmp_path, capsys):
    weights = tmp_path / "demo.pth"
    torch.save({"model": demo[0].state_dict()}, weights)
    out = tmp_path / "demo.onnx"
    args = ["export", "--model", "fastinst-demo", "--weights", str(weights), "--opset", "18"]
    assert main([*args, "--size", "128", "160", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "max abs diff" in text and "opset 18" in text
    assert torch.is_grad_enabled()  # the command leaves the process's autograd state alone
    assert main(["export", "--model", "fastinst-demo", "--size", "100", "160", "--output", str(out)]) == 2
    assert "multiples of 32" in capsys.readouterr().err


def test_export_command_takes_a_trained_checkpoint_with_its_classes(two_classes, tmp_path, capsys):
    """A `fastinst train` checkpoint (config + weights) of a 2-class model exports, whatever --model says."""
    from fastinst.config import to_dict

    model = two_classes[0]
    ckpt = tmp_path / "last.pth"
    torch.save({"model": model.state_dict(), "config": to_dict(model.cfg)}, ckpt)
    out = tmp_path / "two.onnx"
    assert main(["export", "--weights", str(ckpt), "--opset", "18", "--size", "224", "320", "--output", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    onnx_model = OnnxModel(out)
    assert onnx_model.names == ["dog", "cat"] and onnx_model.category_ids == [3, 7]
