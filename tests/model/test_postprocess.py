"""The fast post-processing (only the kept queries are upsampled) equals the official order of operations."""

import torch

from fastinst.model.postprocess import instances, instances_reference
from fastinst.model.preprocess import resize_shape


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(100, 81, generator=g) * 3
    masks = torch.randn(100, 24, 25, generator=g) * 4
    return logits, masks, (192, 200), (190, 181), (253, 241)


def _by_pair(out: dict) -> dict:
    """Instances keyed by (query, label), the official identity of an instance."""
    return {(int(q), int(c)): n for n, (q, c) in enumerate(zip(out["queries"], out["labels"], strict=True))}


def test_fast_equals_reference():
    logits, masks, padded, resized, original = _case()
    a = instances(logits, masks, padded, resized, original)
    b = instances_reference(logits, masks, padded, resized, original)
    pa, pb = _by_pair(a), _by_pair(b)
    assert set(pa) == set(pb) and len(pa) == 100
    for pair, n in pb.items():
        assert torch.equal(a["masks"][pa[pair]], b["masks"][n])
        assert a["scores"][pa[pair]] == b["scores"][n]  # bit-identical
    assert a["masks"].shape == (100, 253, 241)
    assert torch.all(a["scores"][:-1] >= a["scores"][1:])  # best final score first


def test_threshold_first_is_exact_and_upsamples_only_what_it_keeps(monkeypatch):
    import fastinst.model.postprocess as post

    logits, masks, padded, resized, original = _case(1)
    reference = instances_reference(logits, masks, padded, resized, original)
    upsampled = []
    full_size = post._full_size
    monkeypatch.setattr(post, "_full_size", lambda x, *a: upsampled.append(x.shape[0]) or full_size(x, *a))
    for threshold in (0.05, 0.2, 0.5):
        upsampled.clear()
        out = instances(logits, masks, padded, resized, original, score_threshold=threshold)
        keep = reference["scores"] >= threshold
        expected = {k: v[keep] for k, v in reference.items()}
        assert _by_pair(out).keys() == _by_pair(expected).keys()
        assert torch.all(out["scores"] >= threshold)
        for pair, n in _by_pair(expected).items():
            m = _by_pair(out)[pair]
            assert torch.equal(out["masks"][m], expected["masks"][n]) and out["scores"][m] == expected["scores"][n]
        probs, _, queries = post.select(logits, 100)
        can_qualify = int(queries[probs >= threshold].unique().numel())  # class probability alone reaches it
        assert upsampled == [can_qualify]
        if threshold == 0.5:
            assert can_qualify < queries.unique().numel() // 2  # most of the work is skipped


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


def test_nothing_above_the_threshold_gives_empty_results():
    logits, masks, padded, resized, original = _case(2)
    out = instances(logits, masks, padded, resized, original, score_threshold=0.999)
    assert out["masks"].shape == (0, *original) and out["masks"].dtype == torch.bool
    assert out["scores"].shape == out["labels"].shape == out["queries"].shape == (0,)
