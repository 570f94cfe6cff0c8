"""The fast post-processing (only the kept queries are upsampled) equals the official order of operations."""

import pytest
import torch

import fastinst.model.postprocess as post
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
        assert can_qualify <= sum(upsampled) <= can_qualify + 1  # two at a time on a CPU: an odd one is redone
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


def _official(logits, padded, resized, original):
    full = post._full_size(logits, padded, resized, original).sigmoid()
    masks = full > 0.5
    return masks, (full * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)


@pytest.mark.parametrize("count", [1, 2, 7])
def test_two_at_a_time_equals_all_at_once_at_photo_size(count):
    """`binary_masks` works on two masks at a time (cache-sized passes): the masks are bit-identical to the official
    all-at-once order, the scores too with one or two threads, and to float rounding of the sums with more."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(count, 96, 72, generator=g) * 4  # 7: odd, the last step overlaps the one before
    case = (logits, (768, 576), (760, 570), (1080, 810))
    masks, scores = post.binary_masks(*case)
    expected_masks, expected_scores = _official(*case)
    assert torch.equal(masks, expected_masks)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-6, atol=0)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert torch.equal(post.binary_masks(*case)[1], _official(*case)[1]), f"{n} threads"
    finally:
        torch.set_num_threads(threads)
