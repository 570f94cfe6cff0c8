"""The fast post-processing (only the kept queries are upsampled) equals the official order of operations."""

import pytest
import torch

import fastinst.model.postprocess as post
from fastinst.model import span_masks
from fastinst.model.postprocess import instances, instances_reference
from fastinst.model.preprocess import resize_shape
from fastinst.model.span_masks import CellResize, mask_scores, ordered_masks


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


GEOMETRIES = [  # (padded, resized, original)
    ((768, 576), (768, 576), (1080, 810)),  # the D1 photo: the test resize fills the padded batch
    ((448, 800), (437, 777), (1080, 1920)),  # a video frame: padding on both sides
    ((640, 864), (640, 853), (480, 640)),  # shrinking back to a smaller photo
    ((576, 768), (576, 761), (576, 761)),  # original = resized: only the x8 upsample
    ((64, 32), (50, 1), (700, 14)),  # a one-pixel-wide resized image
]


@pytest.mark.parametrize("matmul", ["fp32", "bf16"])
@pytest.mark.parametrize("padded, resized, original", GEOMETRIES)
def test_bf16_logits_take_the_short_route_and_agree(padded, resized, original, matmul, monkeypatch):
    """Logits of a bf16 network take `span_masks` (the two resizes as matmuls inside each mask's box, scores on every
    other row and column), with the large boxes' matmuls in bf16 on CPUs with bf16 hardware and in fp32 elsewhere
    (both forced here): the masks agree with the official route's (fp32 matmuls: all but a few pixels; bf16: IoU
    >= 0.99 each, >= 0.995 in the mean) and so do the mask scores (within 0.01)."""
    monkeypatch.setattr(span_masks, "native_bf16_cpu", lambda: matmul == "bf16")
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(6, padded[0] // 8, padded[1] // 8, generator=g) * 4).to(torch.bfloat16)
    masks, scores = post.binary_masks(logits, padded, resized, original)
    expected_masks, expected_scores = post.binary_masks(logits.float(), padded, resized, original)
    assert masks.shape == expected_masks.shape == (6, *original) and masks.dtype == torch.bool
    iou = _iou(masks, expected_masks)
    assert iou.min() >= 0.99 and iou.mean() >= 0.995, iou
    if matmul == "fp32":  # the official resizes to float rounding: a pixel may flip only where its logit is ~0
        assert int((masks ^ expected_masks).sum()) <= 1e-5 * masks.numel() + 2
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=1e-2)
    assert CellResize(logits, padded, resized, original).low == (torch.bfloat16 if matmul == "bf16" else torch.float32)


@pytest.mark.parametrize("padded, resized, original", GEOMETRIES)
def test_cell_resize_is_the_two_official_resizes(padded, resized, original):
    """`CellResize.values` (fp32) gives the official two resizes' values (`_full_size`) to float rounding, at every
    pixel of a box and at the photo's every other row and column inside it."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, padded[0] // 8, padded[1] // 8, generator=g) * 4
    resize = CellResize(logits, padded, resized, original, low_precision=False)
    official = post._full_size(logits, padded, resized, original)  # (2, H0, W0)
    h, w = original
    whole = (0, h, 0, w)
    inner = (h // 5, h - h // 4, w // 6, max(w // 6 + 1, w - w // 3))
    for i in range(2):
        for box in (whole, inner):
            y0, y1, x0, x1 = box
            for step in (1, 2):
                got = resize.values([i], box, step)[0]
                first_y, first_x = -(-y0 // step) * step, -(-x0 // step) * step  # the photo's every step-th pixel
                expected = official[i, first_y:y1:step, first_x:x1:step]
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_boxes_hold_every_positive_pixel_and_cut_the_rest():
    """A mask made inside its box equals the one made over the whole photo (outside the box every pixel is <= 0),
    and the box of an object is that object's, not the photo: a blob in a corner, a band, an empty mask (score 0)."""
    padded = resized = (96, 128)
    original = (300, 401)
    logits = torch.full((4, 12, 16), -4.0)
    logits[0, 5:7, 2:14] = 3.0  # a wide band
    logits[1, 1:11, 7:9] = 3.0  # a tall band
    logits[2, 0, 0] = 2.0  # a corner
    resize = CellResize(logits, padded, resized, original, low_precision=False)
    official = post._full_size(logits, padded, resized, original) > 0
    masks = ordered_masks(resize, [0, 1, 2, 3])
    assert torch.equal(masks, official)
    (b0, b1, b2, b3) = resize.boxes
    assert b3 == (0, 0, 0, 0) and float(mask_scores(resize)[3]) == 0.0 and not masks[3].any()
    assert b0[1] - b0[0] < 100 and b0[3] - b0[2] > 300  # the band's rows only
    assert b1[3] - b1[2] < 100 and b1[1] - b1[0] > 200  # the tall band's columns only
    assert b2[0] == 0 and b2[2] == 0 and b2[1] < 60 and b2[3] < 60
    for (y0, y1, x0, x1), mask in zip(resize.boxes[:3], masks[:3], strict=True):
        ys, xs = mask.nonzero(as_tuple=True)
        assert y0 <= int(ys.min()) and int(ys.max()) < y1 and x0 <= int(xs.min()) and int(xs.max()) < x1


def test_positive_reads_the_sign_bit_of_bf16():
    """`positive` compares bf16 values as int16 bits: the same answer as `> 0` for negatives, -0, +0, tiny and huge
    values, also into a strided bool view (fp32 values are compared as they are)."""
    values = torch.tensor([-3.0, -1e-30, -0.0, 0.0, 1e-30, 2.5, 3e38, -3e38]).to(torch.bfloat16)
    expected = [False] * 4 + [True] * 3 + [False]
    assert (values > 0).tolist() == expected
    assert span_masks.positive(values.float(), torch.empty(8, dtype=torch.bool)).tolist() == expected
    into = torch.zeros(3, 8, dtype=torch.bool)
    span_masks.positive(values.clone().view(2, 4), into[1:, 2:6])  # a strided view of the masks
    assert into[1:, 2:6].flatten().tolist() == expected and not into[0].any() and not into[:, :2].any()


def test_instances_from_bf16_logits_agree_with_fp32():
    logits, masks, padded, resized, original = _case(2)
    a = instances(logits, masks.to(torch.bfloat16), padded, resized, original, score_threshold=0.3)
    b = instances(logits, masks.to(torch.bfloat16).float(), padded, resized, original, score_threshold=0.3)
    pa, pb = _by_pair(a), _by_pair(b)
    assert len(pb) > 5 and len(set(pa) ^ set(pb)) <= 1  # a pair at the threshold may fall either side
    for pair in set(pa) & set(pb):
        assert _iou(a["masks"][pa[pair]][None], b["masks"][pb[pair]][None]) >= 0.98


def test_bf16_route_scores_small_masks_on_every_pixel():
    """Mask scores come from every SCORE_STEP-th row and column, except for a mask with fewer than EXACT_SCORE_BELOW
    pixels inside there, which gets the mean over all its pixels, so a small object's score does not hang on which
    pixels were sampled; a large mask's sampled mean is within 3e-3 of the full one (a hard edge, the worst case)."""
    padded = resized = (64, 96)
    original = (200, 300)
    logits = torch.full((2, 8, 12), -6.0)
    logits[0, 3, 4] = 2.0  # one positive cell: a small blob of a few hundred pixels
    logits[1, 1:7, 2:10] = 3.0 + torch.rand(6, 8, generator=torch.Generator().manual_seed(0))  # a large mask
    logits = logits.to(torch.bfloat16)
    masks, scores = post.binary_masks(logits, padded, resized, original)
    full = post._full_size(logits.float(), padded, resized, original)
    inside = full > 0
    exact = (full.sigmoid() * inside).flatten(1).sum(1) / inside.flatten(1).sum(1)
    assert _iou(masks, inside).min() >= 0.99
    step, small_below = span_masks.SCORE_STEP, span_masks.EXACT_SCORE_BELOW
    assert 0 < int(inside[0, ::step, ::step].sum()) < small_below <= int(inside[1, ::step, ::step].sum())
    torch.testing.assert_close(scores[0], exact[0], rtol=2e-3, atol=0)  # every pixel (bf16 matmuls: 2e-3)
    assert abs(float(scores[1] - exact[1])) < 3e-3 and float(scores[1]) != float(exact[1])  # sampled pixels


def test_bf16_instances_are_scored_first_and_made_in_place(monkeypatch):
    """On the short route the masks are made after the final order is known: only the pairs that pass the final
    threshold get a full-size mask, each once per pair (a query kept with two classes gets two equal masks), and
    the result equals the official route's instances on the same logits (pairs, order by score, masks IoU)."""
    logits, masks, padded, resized, original = _case(1)
    logits[3, :2] = 9.0  # query 3 confident in two classes: one mask, two pairs
    low = masks.to(torch.bfloat16)
    made: list[int] = []
    values = CellResize.values

    def counted(self, indices, box, step):
        if step == 1:  # one mask, or a run of masks with large boxes
            made.extend(indices)
        return values(self, indices, box, step)

    monkeypatch.setattr(CellResize, "values", counted)
    out = instances(logits, low, padded, resized, original, score_threshold=0.3)
    expected = instances(logits, low.float(), padded, resized, original, score_threshold=0.3)
    assert 0 < len(made) == len(out["scores"])  # one full-size mask per kept pair, none for a dropped one
    candidates = int((post.select(logits, 100)[0] >= 0.3).sum())
    assert len(out["scores"]) < candidates  # the final threshold dropped some pairs before their masks were made
    assert torch.all(out["scores"][:-1] >= out["scores"][1:]) and torch.all(out["scores"] >= 0.3)
    pairs, reference = _by_pair(out), _by_pair(expected)
    assert len(set(pairs) ^ set(reference)) <= 1
    for pair in set(pairs) & set(reference):
        assert _iou(out["masks"][pairs[pair]][None], expected["masks"][reference[pair]][None]) >= 0.98
    twice = [n for (q, _), n in pairs.items() if q == 3]
    assert len(twice) == 2 and torch.equal(out["masks"][twice[0]], out["masks"][twice[1]])
