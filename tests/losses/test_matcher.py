"""Hungarian matcher on tiny hand-computed cases: each cost term, location semantics, proposals, empty images."""

from __future__ import annotations

import math

import torch

from fastinst.losses.matcher import HungarianMatcher, location_cost, proposal_match
from fastinst.losses.points import ReplayRand

L3 = math.log(3.0)  # sigmoid(+-L3) = 3/4, 1/4
CENTRES = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]])  # (1, 4, 2) pixel centres of 2x2


def tiny_case(with_locations: bool = True):
    """Two queries, two GTs on a 2x2 image; query 0 fits GT 1 (bottom row), query 1 fits GT 0 (top row)."""
    gt = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [1, 1]]], dtype=torch.bool)  # (2, 2, 2)
    masks = torch.tensor([[[-L3, -L3], [L3, L3]], [[L3, L3], [-L3, -L3]]]).unsqueeze(0)  # (1, 2, 2, 2)
    logits = torch.tensor([[[0.0, math.log(2.0), 0.0], [math.log(2.0), 0.0, 0.0]]])  # probs 1/4,1/2,1/4 | 1/2,1/4,1/4
    outputs = {"pred_logits": logits, "pred_masks": masks}
    if with_locations:
        outputs["query_locations"] = torch.tensor([[[0.75, 0.75], [0.25, 0.25]]])  # q0 in GT1, q1 in GT0
    targets = [{"labels": torch.tensor([0, 1]), "masks": gt}]
    return outputs, targets


def cost(weights: dict, outputs, targets) -> torch.Tensor:
    kw = {"cost_class": 0.0, "cost_mask": 0.0, "cost_dice": 0.0, "cost_location": 0.0, **weights}
    return HungarianMatcher(num_points=4, **kw).cost_matrix(outputs, targets, 0, ReplayRand([CENTRES]))


def test_each_cost_term_by_hand():
    outputs, targets = tiny_case()
    good, bad = math.log(4 / 3), math.log(4.0)  # BCE of a 3/4-confident right / wrong prediction
    expect = {
        "cost_class": [[-0.25, -0.5], [-0.5, -0.25]],
        "cost_mask": [[bad, good], [good, bad]],
        # dice: sum p = 2, sum t = 2; right: 2*(3/4*2) = 3 -> 1 - 4/5; wrong: 2*(1/4*2) = 1 -> 1 - 2/5
        "cost_dice": [[0.6, 0.2], [0.2, 0.6]],
        "cost_location": [[0.0, -1.0], [-1.0, 0.0]],
    }
    for name, value in expect.items():
        torch.testing.assert_close(cost({name: 1.0}, outputs, targets), torch.tensor(value), msg=name)
    total = cost({"cost_class": 2.0, "cost_mask": 5.0, "cost_dice": 5.0, "cost_location": 1000.0}, outputs, targets)
    torch.testing.assert_close(total[0, 1], torch.tensor(2 * -0.5 + 5 * good + 5 * 0.2 - 1000.0))


def test_matching_picks_obvious_assignment_and_consumes_one_draw_per_image():
    outputs, targets = tiny_case()
    replay = ReplayRand([CENTRES])
    ((src, tgt),) = HungarianMatcher(num_points=4)(outputs, targets, rand=replay)
    assert replay.remaining == 0
    assert src.dtype == tgt.dtype == torch.int64
    assert src.tolist() == [0, 1] and tgt.tolist() == [1, 0]


def test_without_locations_there_is_no_location_cost():
    outputs, targets = tiny_case(with_locations=False)
    assert torch.count_nonzero(cost({"cost_location": 1000.0}, outputs, targets)) == 0


def test_location_cost_dominates_mask_quality():
    outputs, targets = tiny_case()
    targets = [{"labels": torch.tensor([0]), "masks": targets[0]["masks"][:1]}]  # only GT 0 (top row)
    outputs["query_locations"] = torch.tensor([[[0.25, 0.25], [0.75, 0.75]]])  # q0 now in GT 0, q1 outside
    ((src, tgt),) = HungarianMatcher(num_points=4)(outputs, targets, rand=ReplayRand([CENTRES]))
    assert src.tolist() == [0] and tgt.tolist() == [0]  # q1 fits GT 0 perfectly but its location is outside


def test_location_cost_border_semantics():
    # SPEC §7.7: location 0 is the outer border; bilinear weight 1/4 on the corner pixel, zero padding elsewhere.
    corner = torch.zeros(1, 4, 4)
    corner[0, 0, 0] = 1
    beside = torch.zeros(1, 4, 4)
    beside[0, 0, 1] = 1
    far = torch.zeros(1, 4, 4)
    far[0, 3, 3] = 1
    half = torch.zeros(1, 4, 4)
    half[0, :, 2] = 1
    locs = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    assert location_cost(corner, locs)[:, 0].tolist() == [-1.0, 0.0, 0.0]
    assert location_cost(beside, locs)[:, 0].tolist() == [0.0, 0.0, 0.0]
    assert location_cost(far, locs)[:, 0].tolist() == [0.0, -1.0, 0.0]
    assert location_cost(half, locs)[:, 0].tolist() == [0.0, 0.0, -1.0]  # x = 0.5 is the col 1|2 boundary


def test_image_without_targets_still_draws():
    outputs, targets = tiny_case()
    outputs = {k: torch.cat([v, v]) for k, v in outputs.items()}
    targets = [
        {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 2, 2, dtype=torch.bool)},
        targets[0],
    ]
    replay = ReplayRand([CENTRES, CENTRES])
    result = HungarianMatcher(num_points=4)(outputs, targets, rand=replay)
    assert replay.remaining == 0
    assert result[0][0].numel() == 0 and result[0][1].numel() == 0 and result[0][0].dtype == torch.int64
    assert result[1][0].tolist() == [0, 1] and result[1][1].tolist() == [1, 0]


def test_proposal_match_inside_cells_and_best_probability():
    # 32x32 padded image -> 2x2 stride-16 grid (flat pixel = row*2 + col); 3 classes incl. background.
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0] = torch.tensor([[1.0, 2.0], [5.0, 0.0]])  # class 0: best in the top row at cell (0, 1)
    logits[0, 1] = torch.tensor([[4.0, 4.0], [0.0, 4.0]])  # class 1: low at cell (1, 0)
    gt = torch.zeros(2, 32, 32, dtype=torch.bool)
    gt[0, :16, :] = True  # GT 0 (class 0): top row of cells
    gt[1, 20, 5] = True  # GT 1 (class 1): one pixel, in cell (1, 0)
    ((pix, tgt),) = proposal_match(logits, [{"labels": torch.tensor([0, 1]), "masks": gt}])
    assert dict(zip(tgt.tolist(), pix.tolist(), strict=True)) == {0: 1, 1: 2}
    empty = proposal_match(
        logits, [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}]
    )
    assert empty[0][0].numel() == 0
