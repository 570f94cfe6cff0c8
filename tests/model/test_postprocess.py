"""The fast post-processing (only the kept queries are upsampled) equals the official order of operations."""

import torch

from fastinst.model.postprocess import instances, instances_reference
from fastinst.model.preprocess import resize_shape


def test_fast_equals_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(100, 81, generator=g) * 3
    masks = torch.randn(100, 24, 25, generator=g) * 4
    padded, resized, original = (192, 200), (190, 181), (253, 241)
    a = instances(logits, masks, padded, resized, original)
    b = instances_reference(logits, masks, padded, resized, original)
    for k in ("labels", "queries"):
        assert torch.equal(a[k], b[k])
    assert torch.equal(a["masks"], b["masks"])
    assert torch.allclose(a["scores"], b["scores"], atol=1e-7)
    assert a["masks"].shape == (100, 253, 241)
    class_probs = logits.softmax(-1)[a["queries"], a["labels"]]  # instances come best class probability first
    assert torch.all(class_probs[:-1] >= class_probs[1:])


def test_query_may_appear_with_several_classes():
    logits = torch.full((3, 5), -10.0)
    logits[0, :4] = 5.0  # query 0 is confident in four classes
    out = instances(logits, torch.ones(3, 4, 4), (32, 32), (32, 32), (32, 32), k=4)
    assert out["queries"].tolist() == [0, 0, 0, 0]
    assert sorted(out["labels"].tolist()) == [0, 1, 2, 3]


def test_resize_shape_matches_detectron2_rule():
    assert resize_shape(480, 640, 576, 777) == (576, 768)
    assert resize_shape(604, 453, 640, 853) == (853, 640)
    assert resize_shape(427, 573, 576, 777) == (576, 773)
    assert resize_shape(640, 640, 576, 777) == (576, 576)
