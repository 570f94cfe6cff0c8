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


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@pytest.mark.parametrize(
    "padded, resized, original",
    [
        ((768, 576), (768, 576), (1080, 810)),  # the D1 photo: the test resize fills the padded batch
        ((448, 800), (437, 777), (1080, 1920)),  # a video frame: padding on both sides
        ((640, 864), (640, 853), (480, 640)),  # shrinking back to a smaller photo
        ((576, 768), (576, 761), (576, 761)),  # original = resized: only the x8 upsample
        ((64, 32), (50, 1), (700, 14)),  # a one-pixel-wide resized image
    ],
)
def test_bf16_logits_take_the_short_route_and_agree(padded, resized, original):
    """Logits of a bf16 network take `binary_masks_bf16` (one resize, threshold on the logit, scores from every other
    row): the masks agree with the official two-step route's (IoU >= 0.99 each, >= 0.995 in the mean) and so do the
    mask scores (within 0.01)."""
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(6, padded[0] // 8, padded[1] // 8, generator=g) * 4).to(torch.bfloat16)
    masks, scores = post.binary_masks(logits, padded, resized, original)
    expected_masks, expected_scores = post.binary_masks(logits.float(), padded, resized, original)
    assert masks.shape == expected_masks.shape == (6, *original) and masks.dtype == torch.bool
    iou = _iou(masks, expected_masks)
    assert iou.min() >= 0.99 and iou.mean() >= 0.995, iou
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=1e-2)
    assert not torch.equal(masks, expected_masks) or resized == original  # the other route really ran


def test_one_resize_samples_the_composed_pixel_centres():
    """A logit field linear in x and y is reproduced exactly by every bilinear resize away from the borders, so both
    routes must give the same values there: this pins `_one_resize`'s scale and alignment to the official map."""
    padded, resized, original = (96, 128), (90, 120), (135, 180)
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing="ij")
    field = (3 * ys - 2 * xs + 7).unsqueeze(0)  # (1, 12, 16)
    one = post._one_resize(field, padded, resized, original)
    two = post._full_size(field, padded, resized, original)
    inner = (slice(None), slice(12, -12), slice(12, -12))  # clear of the clamped borders of both routes
    torch.testing.assert_close(one[inner], two[inner], rtol=0, atol=1e-4)


def test_instances_from_bf16_logits_agree_with_fp32():
    logits, masks, padded, resized, original = _case(2)
    a = instances(logits, masks.to(torch.bfloat16), padded, resized, original, score_threshold=0.3)
    b = instances(logits, masks.to(torch.bfloat16).float(), padded, resized, original, score_threshold=0.3)
    pa, pb = _by_pair(a), _by_pair(b)
    assert len(pb) > 5 and len(set(pa) ^ set(pb)) <= 1  # a pair at the threshold may fall either side
    for pair in set(pa) & set(pb):
        assert _iou(a["masks"][pa[pair]][None], b["masks"][pb[pair]][None]) >= 0.98


def test_bf16_route_scores_small_masks_on_every_pixel():
    """A mask with fewer than EXACT_SCORE_BELOW sampled pixels inside gets the mean over all its pixels (of the one
    resize), so a small object's score does not hang on which rows were sampled; a large mask's sampled mean is
    within 2e-3 of the full one."""
    padded = resized = (64, 96)
    original = (200, 300)
    logits = torch.full((2, 8, 12), -6.0)
    logits[0, 3, 4] = 2.0  # one positive cell: a small blob of a few hundred pixels
    logits[1, 1:7, 2:10] = 3.0 + torch.rand(6, 8, generator=torch.Generator().manual_seed(0))  # a large mask
    masks, scores = post.binary_masks_bf16(logits, padded, resized, original)
    full = post._one_resize(logits, padded, resized, original).sigmoid()
    inside = full > 0.5
    exact = (full * inside).flatten(1).sum(1) / inside.flatten(1).sum(1)
    assert torch.equal(masks, inside)
    assert 0 < int(inside[0, ::2].sum()) < post.EXACT_SCORE_BELOW <= int(inside[1, ::2].sum())
    torch.testing.assert_close(scores[0], exact[0], rtol=1e-6, atol=0)  # every pixel
    assert abs(float(scores[1] - exact[1])) < 2e-3 and float(scores[1]) != float(exact[1])  # sampled rows
