"""point_sample corner semantics, uncertain point selection order, and the ReplayRand shape check."""

from __future__ import annotations

import pytest
import torch

from fastinst.losses.points import ReplayRand, point_sample, uncertain_points


def grid_2x2() -> torch.Tensor:
    return torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)


def test_point_sample_pixel_centres_are_exact_and_xy_ordered():
    coords = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]])  # (1, 4, 2) xy
    out = point_sample(grid_2x2(), coords)
    assert out.shape == (1, 1, 4)
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_point_sample_corners_and_centre():
    # 0 and 1 are the outer image borders: a corner reads 1/4 of its pixel (zero padding), the centre the mean.
    coords = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5], [0.5, 0.0]]])
    out = point_sample(grid_2x2(), coords)[0, 0]
    torch.testing.assert_close(out, torch.tensor([0.25, 0.5, 0.75, 1.0, 2.5, 0.75]))


def test_point_sample_align_corners_true_hits_pixels():
    coords = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    out = point_sample(grid_2x2(), coords, align_corners=True)[0, 0]
    torch.testing.assert_close(out, torch.tensor([1.0, 4.0]))


def test_replay_rand_order_shape_and_device():
    a, b = torch.rand(1, 3, 2), torch.rand(2, 5, 2)
    replay = ReplayRand([a, b], roles=["first", "second"])
    assert torch.equal(replay(1, 3, 2, device="cpu"), a)
    with pytest.raises(RuntimeError, match="second"):
        replay(2, 4, 2)
    assert replay.remaining == 1
    assert torch.equal(replay((2, 5, 2)), b)
    assert replay.remaining == 0 and bool(replay)
    with pytest.raises(RuntimeError, match="only 2 draws"):
        replay(1)


def test_uncertain_points_topk_first_then_fresh_with_row_offset():
    # Two masks on a 2x2 grid; the candidates sit at pixel centres so their logits are exact.
    logits = torch.tensor([[[[0.1, -5.0], [3.0, -0.2]]], [[[-9.0, 0.05], [7.0, 1.0]]]])  # (2, 1, 2, 2)
    centres = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])  # pixel order
    cand = torch.stack([centres, centres.flip(0)])  # (2, 4, 2)
    fresh = torch.full((2, 1, 2), 0.5)
    replay = ReplayRand([cand, fresh])
    # num_points 4, oversample 1 -> 4 candidates; importance 0.75 -> 3 uncertain + 1 fresh
    out = uncertain_points(logits, 4, 1.0, 0.75, replay)
    assert out.shape == (2, 4, 2) and replay.remaining == 0
    # row 0: |logit| 0.1, 5, 3, 0.2 -> most uncertain pixels 0, 3, 2
    torch.testing.assert_close(out[0, :3], centres[[0, 3, 2]])
    # row 1 candidates are reversed pixels 3, 2, 1, 0 with |logit| 1, 7, 0.05, 9 -> candidates 2, 0, 1
    torch.testing.assert_close(out[1, :3], centres[[1, 3, 2]])
    torch.testing.assert_close(out[:, 3:], fresh)


def test_uncertain_points_draw_shapes():
    shapes = []

    def rand(*shape, device=None):
        shapes.append(shape)
        return torch.rand(*shape, device=device)

    out = uncertain_points(torch.randn(3, 1, 8, 8), 100, 3.0, 0.75, rand)
    assert out.shape == (3, 100, 2)
    assert shapes == [(3, 300, 2), (3, 25, 2)]
