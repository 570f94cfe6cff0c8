"""Huge images are post-processed in column tiles, one mask at a time (bounded float memory): the same masks bit for
bit and the same scores to the rounding of their sums as the untiled path. Tile sizes are forced small here so that
a moderately large case has many tiles."""

from __future__ import annotations

import itertools

import pytest
import torch

import fastinst.model.postprocess as post


def _logits(count: int, h8: int, w8: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, h8, w8, generator=g) * 4


def _assert_same(tiled, untiled) -> None:
    (masks, scores), (expected_masks, expected_scores) = tiled, untiled
    assert masks.dtype == torch.bool and masks.shape == expected_masks.shape
    assert torch.equal(masks, expected_masks)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "padded,resized,original,elements",
    [
        ((320, 416), (317, 410), (1201, 1553), 1201 * 130),  # 12 tiles of 128 columns, the last one 145 wide
        ((320, 416), (317, 410), (1201, 1553), 1),  # the narrowest tiles: 64 columns
        ((224, 320), (224, 299), (700, 934), 10**9),  # one tile
        ((224, 320), (224, 299), (224, 299), 224 * 64),  # no second resize (the image is at the test size)
    ],
)
def test_tiled_equals_untiled(padded, resized, original, elements):
    logits = _logits(5, padded[0] // 8, padded[1] // 8)
    case = (logits, padded, resized, original)
    _assert_same(post.binary_masks_tiled(*case, elements=elements), post.binary_masks(*case))


def test_column_tiles_cover_the_width_in_aligned_steps():
    for width, height, elements in [(1553, 1201, 1201 * 130), (10000, 10000, post.TILE_ELEMENTS), (50, 9, 1)]:
        tiles = post.column_tiles(width, height, elements)
        assert tiles[0][0] == 0 and tiles[-1][1] == width
        assert all(a[1] == b[0] for a, b in itertools.pairwise(tiles))
        widths = [stop - start for start, stop in tiles]
        assert all(w % post.TILE_ALIGN == 0 for w in widths[:-1])
        assert len(widths) == 1 or widths[-1] >= widths[0]  # no narrow last tile
    assert post.column_tiles(10000, 10000, post.TILE_ELEMENTS)[0] == (0, 1664)  # ~64 MiB of float32 per tile


def test_instances_switch_to_tiles_for_huge_outputs(monkeypatch):
    """Above TILED_ABOVE values per step `instances` makes no full-size float mask at all, and returns the untiled
    instances: same pairs and order, same masks, same scores to rounding."""
    g = torch.Generator().manual_seed(4)
    pred_logits = torch.randn(16, 5, generator=g) * 3
    pred_masks = _logits(16, 40, 52, seed=5)
    args = (pred_logits, pred_masks, (320, 416), (317, 410), (1201, 1553))
    untiled = post.instances(*args, k=30)

    def untiled_path(*args):
        pytest.fail("a full-size float mask was made")

    monkeypatch.setattr(post, "TILED_ABOVE", 1201 * 1553)  # a pair of masks at this size is "huge"
    monkeypatch.setattr(post, "TILE_ELEMENTS", 1201 * 200)
    monkeypatch.setattr(post, "_full_size", untiled_path)
    tiled = post.instances(*args, k=30)
    assert torch.equal(tiled["queries"], untiled["queries"]) and torch.equal(tiled["labels"], untiled["labels"])
    assert torch.equal(tiled["masks"], untiled["masks"])
    torch.testing.assert_close(tiled["scores"], untiled["scores"], rtol=1e-6, atol=0)
    assert len(untiled["scores"]) == 30 and untiled["queries"].unique().numel() < 30  # repeated queries too


def test_shrinking_resize_is_never_tiled(monkeypatch):
    """An output smaller than the network input (a tiny image upscaled by the test resize) keeps the untiled path,
    whose numbers the tiles reproduce only when both sides grow."""
    monkeypatch.setattr(post, "TILED_ABOVE", 1)

    def tiled(*args, **kwargs):
        pytest.fail("tiled")

    monkeypatch.setattr(post, "binary_masks_tiled", tiled)
    masks, _scores = post.binary_masks(_logits(3, 28, 28), (224, 224), (224, 224), (100, 120))
    assert masks.shape == (3, 100, 120)


@pytest.mark.parametrize(
    "index,size",
    [
        ([3, 0, 2], 5),
        ([4, 3, 2, 1, 0], 5),
        ([1, 2, 3, 4, 0], 5),
        ([0, 1, 2, 3, 4], 5),
        ([2], 5),
        ([2, 0, 2, 1, 0, 2], 6),  # a mask kept with several classes: its copies fill the buffer's free tail
        ([1, 1, 0, 1], 5),
    ],
)
def test_arrange_gathers_inside_the_buffer(index, size):
    """Ordering huge masks moves them inside their own buffer (no second copy of them all) with the gather's result,
    masks repeated too; the buffer's slots past the masks made are free space."""
    masks = torch.rand(size, 7, 9) > 0.5
    made = max(index) + 1
    masks[made:] = False  # free slots
    expected = masks[torch.tensor(index)].clone()
    storage = masks.untyped_storage().data_ptr()
    out = post.arrange(masks, torch.tensor(index))
    assert torch.equal(out, expected) and out.untyped_storage().data_ptr() == storage
