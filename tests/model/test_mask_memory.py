"""Post-processing's masks: memory reused from one image to the next only once nothing holds it, masks made in runs
over a shared box and scored together equal the ones made and scored one at a time."""

import pytest
import torch

import fastinst.model.mask_memory as memory
import fastinst.model.postprocess as post
from fastinst.model import span_masks
from fastinst.model.span_masks import CellResize, mask_scores, ordered_masks


@pytest.fixture(autouse=True)
def nothing_kept(monkeypatch):
    """Each test starts without a kept buffer (and leaves none behind)."""
    monkeypatch.setattr(memory, "_spare", [])
    monkeypatch.setattr(memory, "_idle", [])


def _address(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_memory_is_reused_only_once_nothing_holds_it(monkeypatch):
    a = memory.mask_memory((3, 40, 50))
    assert a.shape == (3, 40, 50) and a.dtype == torch.bool
    b = memory.mask_memory((3, 40, 50))
    assert _address(b) != _address(a)  # `a` is still held: new memory
    kept = _address(b)
    del a, b
    c = memory.mask_memory((2, 40, 50))  # fewer masks fit in the kept buffer
    assert _address(c) == kept
    holders = {
        "numpy view": lambda t: t[1].numpy(),
        "tensor slice": lambda t: t[0, 3:],
        "reshape": lambda t: t.flatten(),
    }
    for name, hold in holders.items():
        held = hold(c)
        del c
        c = memory.mask_memory((2, 40, 50))
        assert _address(c) != kept, name  # the kept buffer is still reachable through `held`
        kept = _address(c)
        del held
    bigger = memory.mask_memory((4, 40, 50))  # more than the kept buffer holds
    assert _address(bigger) != kept
    monkeypatch.setattr(memory, "KEEP_UP_TO", 1000)
    huge = memory.mask_memory((1, 40, 50))  # over KEEP_UP_TO: its own memory, never kept
    assert _address(huge) != _address(bigger) and memory._spare[-1].ctypes.data == _address(bigger)
    kept = _address(bigger)
    del huge, bigger
    assert _address(memory.mask_memory((1, 10, 10))) == kept  # the kept buffer is still the one under KEEP_UP_TO


def test_a_loop_that_holds_the_last_results_alternates_between_two_buffers():
    """`for result in stream:` holds one image's masks while the next are made: the two buffers take turns, and no
    image gets memory that a held result still uses."""
    held = memory.mask_memory((3, 40, 50))
    addresses = {_address(held)}
    for _ in range(6):
        made = memory.mask_memory((3, 40, 50))
        assert _address(made) != _address(held)
        addresses.add(_address(made))
        held = made  # the loop variable moves on: the results before it are dropped
    assert len(addresses) == memory.KEEP_BUFFERS == 2
    others = [memory.mask_memory((3, 40, 50)) for _ in range(3)]  # all held: each in its own memory
    assert len({_address(t) for t in [held, *others]}) == 4 and len(memory._spare) == 2


def test_clear_outside_leaves_only_the_box():
    mask = torch.ones(7, 9, dtype=torch.bool)
    memory.clear_outside(mask, (2, 5, 3, 8))
    expected = torch.zeros(7, 9, dtype=torch.bool)
    expected[2:5, 3:8] = True
    assert torch.equal(mask, expected)
    memory.clear_outside(mask, (0, 0, 0, 0))  # an empty mask
    assert not mask.any()


def _objects() -> torch.Tensor:
    """Stride-8 logits of a 96x128 input: three masks with large, different boxes, a small one, an empty one."""
    logits = torch.full((5, 12, 16), -4.0)
    logits[0, 1:11, 1:15] = 3.0  # most of the photo
    logits[1, 0:7, 0:9] = 2.0  # its upper-left part
    logits[2, 4:12, 6:16] = 2.5  # its lower-right part
    logits[3, 9, 2] = 2.0  # a small blob
    return logits  # mask 4: empty


@pytest.mark.parametrize("run", [1, 2, 3])
def test_masks_made_in_runs_into_used_memory_equal_the_official(monkeypatch, run):
    """`ordered_masks` in memory full of another image's True pixels (as `mask_memory` may hand out): every pixel
    outside a mask's box is cleared, masks with large boxes made `run` at a time over the box that holds theirs
    equal the official masks, as the small and the empty one do."""
    padded = resized = (96, 128)
    original = (300, 401)
    logits = _objects()
    monkeypatch.setattr(span_masks, "MASK_GROUP", run * original[0] * original[1])
    monkeypatch.setattr(span_masks, "mask_memory", lambda shape: torch.ones(shape, dtype=torch.bool))
    resize = CellResize(logits, padded, resized, original, low_precision=False)
    large = [span_masks._large(resize, box) for box in resize.boxes]
    assert large == [True, True, True, False, False] and len(set(resize.boxes[:3])) == 3
    official = post._full_size(logits, padded, resized, original) > 0
    order = [0, 1, 2, 3, 4, 2, 0]
    assert torch.equal(ordered_masks(resize, order), official[order])


@pytest.mark.parametrize("low_precision", [False, True])
def test_scores_together_equal_scores_one_by_one(monkeypatch, low_precision):
    """Masks with large boxes scored together (over the box holding all of theirs, `SCORE_GROUP` values at a time)
    get the scores they get one at a time inside their own boxes: to float rounding with fp32 matmuls, to bf16's
    with bf16 ones."""
    padded = resized = (96, 128)
    original = (300, 401)
    g = torch.Generator().manual_seed(0)
    logits = torch.cat([_objects(), torch.randn(3, 12, 16, generator=g) * 4])  # and three photo-wide noise masks
    resize = CellResize(logits, padded, resized, original, low_precision=low_precision)
    monkeypatch.setattr(span_masks, "SHARED_BOX_FROM", 0)  # no box is large: each mask on its own
    each = mask_scores(resize)
    monkeypatch.setattr(span_masks, "SHARED_BOX_FROM", 10**9)  # every box is large
    monkeypatch.setattr(span_masks, "SCORE_GROUP", 3 * (original[0] // 3 + 1) * (original[1] // 3 + 1))  # 3 a step
    together = mask_scores(resize)
    assert float(each[4]) == float(together[4]) == 0.0 and each[:4].min() > 0.5
    torch.testing.assert_close(together, each, rtol=0, atol=2e-3 if low_precision else 1e-5)


@pytest.mark.parametrize("columns", [300, 1 << 15], ids=["int16-rows", "wider-than-int16"])
def test_areas_are_exact_counts(columns):
    """`_area` counts each mask's flags exactly: int16 flags of bf16 values row by row in int16, and rows of 2^15 or
    more flags (which an int16 row sum would overflow) and float32 flags in float."""
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 7, columns, generator=g)
    values[1] = 1.0  # every pixel inside: a full row of 2^15 ones overflows int16
    expected = (values > 0).flatten(1).sum(1).double()
    for dtype in (torch.bfloat16, torch.float32):
        flags = span_masks._flags(values.to(dtype))
        assert flags.dtype == (torch.int16 if dtype == torch.bfloat16 else torch.float32)
        assert torch.equal(span_masks._area(flags), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["official-route", "short-route"])
def test_masks_a_caller_holds_are_never_overwritten(dtype):
    """The next image's masks go to other memory while the caller still holds the last ones, on both routes."""
    g = torch.Generator().manual_seed(3)
    padded = resized = (96, 128)
    original = (300, 401)
    logits = torch.randn(2, 100, 81, generator=g) * 3
    logits[:, :10, :3] += 8.0  # ten confident queries
    masks = (torch.randn(2, 100, 12, 16, generator=g) * 4).to(dtype)
    first = post.instances(logits[0], masks[0], padded, resized, original, score_threshold=0.3)
    before = first["masks"].clone()
    assert len(before) >= 5 and before.any()
    second = post.instances(logits[1], masks[1], padded, resized, original, score_threshold=0.3)
    assert torch.equal(first["masks"], before) and not torch.equal(second["masks"][:1], before[:1])
