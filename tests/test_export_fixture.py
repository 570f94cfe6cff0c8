"""`--backend onnxruntime` gives the same instances as PyTorch (and as the official code) on the fixture photos: the
D1-R50 compact fixture exported by torch's dynamo exporter (dynamic H/W), reopened from the file alone."""

import torch

from conftest import COMPACT_FIXTURE
from fastinst.export import OnnxModel, export_onnx
from parity.fixture import fixture_model, open_fixture


def _pairs(found: dict, num_classes: int) -> list[int]:
    """(query, class) pairs as the official flat top-k index query * K + class."""
    return (torch.as_tensor(found["queries"]) * num_classes + torch.as_tensor(found["labels"])).tolist()


def _same(a: dict, b: dict, num_classes: int) -> None:
    """Same pairs; per pair scores within 1e-4 and masks with IoU >= 0.99."""
    key_a, key_b = _pairs(a, num_classes), _pairs(b, num_classes)
    assert set(key_a) == set(key_b) and len(key_a) == len(key_b)
    order = {k: n for n, k in enumerate(key_b)}
    idx = [order[k] for k in key_a]
    assert torch.allclose(a["scores"], b["scores"][idx], atol=1e-4)
    mb = b["masks"][idx]
    inter = (a["masks"] & mb).flatten(1).sum(1).float()
    union = (a["masks"] | mb).flatten(1).sum(1).float().clamp(min=1)
    assert (inter / union).min() >= 0.99


def test_onnxruntime_instances_equal_pytorch_on_fixture_photos(tmp_path):
    npz = open_fixture(COMPACT_FIXTURE)
    meta, model = npz.meta, fixture_model(npz)
    assert (model.cfg.input.min_size_test, model.cfg.input.max_size_test) == (
        meta["variant"]["min_size_test"],
        meta["variant"]["max_size_test"],
    )
    photos = [npz[f"input.{i}.original"] for i in range(len(meta["images"]))]
    k = model.num_classes
    ours = model.detect(photos)
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "d1.onnx", dynamic=True))  # config and classes from the file
    assert onnx_model.names == model.names and onnx_model.category_ids == model.category_ids
    theirs = onnx_model.detect(photos)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert set(_pairs(a, k)) == set(npz[f"eval.instances.{i}.topk_flat_index"].tolist())
        assert b["masks"].shape[1:] == photos[i].shape[:2]
        _same(a, b, k)
    # with a score threshold: the same post-processing drops the same pairs
    scores = torch.sort(ours[0]["scores"], descending=True).values
    gaps = torch.nonzero(scores[:-1] - scores[1:] > 1e-3).flatten()  # thresholds well away from every score
    gap = int(gaps[len(gaps) // 2])
    threshold = float(scores[gap] + scores[gap + 1]) / 2
    kept = model.detect(photos, score_threshold=threshold)
    for a, b in zip(kept, onnx_model.detect(photos, score_threshold=threshold), strict=True):
        assert bool((b["scores"] >= threshold).all())
        _same(a, b, k)
