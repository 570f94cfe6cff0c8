"""SetCriterion: hand-computed BCE/dice/CE values, the draw order, matching reuse, weights and the state dict."""

from __future__ import annotations

import math

import torch

from fastinst.losses.criterion import (
    SetCriterion,
    build_weight_dict,
    dice_loss,
    num_masks_of,
    sigmoid_bce_loss,
    weighted_total,
)
from fastinst.losses.matcher import HungarianMatcher
from fastinst.losses.points import ReplayRand

L3 = math.log(3.0)


def test_sigmoid_bce_and_dice_by_hand():
    logits = torch.tensor([[L3, -L3, L3], [0.0, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.5, 0.0]])
    # row 0: log(4/3), log 4, log 4 ; row 1: log 2 for every label (BCE at p = 1/2 is log 2 for any target)
    bce = ((math.log(4 / 3) + 2 * math.log(4)) / 3 + math.log(2)) / 2.0
    torch.testing.assert_close(sigmoid_bce_loss(logits, labels, 2.0), torch.tensor(bce))
    # row 0: p = 3/4, 1/4, 3/4 -> 2*sum(p*y) = 2, sum p = 7/4, sum y = 2 -> 1 - 3/(19/4)
    # row 1: p = 1/2 each -> 2*sum(p*y) = 1.5, sum p = 1.5, sum y = 1.5 -> 1 - 2.5/4
    dice = ((1 - 3 / (19 / 4)) + (1 - 2.5 / 4)) / 2.0
    torch.testing.assert_close(dice_loss(logits, labels, 2.0), torch.tensor(dice))


def test_weight_dict_and_total():
    w = build_weight_dict(2.0, 5.0, 5.0, 20.0, num_aux=2)
    assert list(w) == [
        "loss_ce",
        "loss_mask",
        "loss_dice",
        "loss_ce_0",
        "loss_mask_0",
        "loss_dice_0",
        "loss_ce_1",
        "loss_mask_1",
        "loss_dice_1",
        "loss_proposal",
    ]
    assert w["loss_mask_1"] == 5.0 and w["loss_proposal"] == 20.0 and w["loss_ce_0"] == 2.0
    losses = {"loss_ce": torch.tensor(1.0), "loss_proposal": torch.tensor(0.5), "other": torch.tensor(100.0)}
    torch.testing.assert_close(weighted_total(losses, w), torch.tensor(12.0))


def test_empty_weight_buffer_in_state_dict():
    crit = SetCriterion(80, HungarianMatcher())
    sd = crit.state_dict()
    assert list(sd) == ["empty_weight"]
    assert sd["empty_weight"].shape == (81,) and sd["empty_weight"][:80].eq(1).all()
    assert sd["empty_weight"][-1] == torch.tensor(0.1)


def test_num_masks_counts_empty_targets_and_clamps():
    t = [{"labels": torch.tensor([1, 2])}, {"labels": torch.tensor([0])}]
    assert num_masks_of(t, torch.device("cpu")) == 3.0
    assert num_masks_of([{"labels": torch.zeros(0, dtype=torch.long)}], torch.device("cpu")) == 1.0


def batch(c: float = 0.7):
    """B = 2, Q = 3, K = 2: image 0 has one full GT, image 1 a full GT and an empty GT; constant mask logits c."""
    h = 8
    full, empty = torch.ones(h, h, dtype=torch.bool), torch.zeros(h, h, dtype=torch.bool)
    targets = [
        {"labels": torch.tensor([1]), "masks": full[None]},
        {"labels": torch.tensor([0, 1]), "masks": torch.stack([full, empty])},
    ]
    logits = torch.tensor(
        [[[2.0, 0.0, 1.0], [0.5, -1.0, 0.0], [0.0, 0.0, 3.0]], [[1.0, 1.0, 1.0], [-2.0, 0.0, 2.0], [0.3, 0.2, 0.1]]]
    )
    outputs = {
        "pred_logits": logits,
        "pred_masks": torch.full((2, 3, 4, 4), c),
        "query_locations": torch.full((2, 3, 2), 0.5),
    }
    matching = [(torch.tensor([2]), torch.tensor([0])), (torch.tensor([0, 1]), torch.tensor([1, 0]))]
    return outputs, targets, matching


def test_losses_of_a_given_matching_by_hand():
    c = 0.7
    outputs, targets, matching = batch(c)
    outputs["pred_matching_indices"] = matching
    crit = SetCriterion(
        2, HungarianMatcher(num_points=4), num_points=4, oversample_ratio=1.0, importance_sample_ratio=0.5
    )
    interior = torch.tensor([[0.3, 0.4], [0.5, 0.5], [0.6, 0.7], [0.45, 0.55]])
    replay = ReplayRand([interior.expand(3, 4, 2), interior[:2].expand(3, 2, 2)])
    losses = crit({k: v for k, v in outputs.items()}, targets, rand=replay)
    assert replay.remaining == 0 and set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    # matched: (img0, q2) -> class 1 full, (img1, q0) -> class 1 empty, (img1, q1) -> class 0 full; num_masks = 3
    p = 1 / (1 + math.exp(-c))
    bce = (2 * math.log(1 + math.exp(-c)) + math.log(1 + math.exp(c))) / 3
    dice = (2 * (1 - (8 * p + 1) / (4 * p + 4 + 1)) + (1 - 1 / (4 * p + 1))) / 3
    torch.testing.assert_close(losses["loss_mask"], torch.tensor(bce))
    torch.testing.assert_close(losses["loss_dice"], torch.tensor(dice))
    # CE: weighted mean with weights 1, 1, 0.1 (no-object = class 2)
    target = [[2, 2, 1], [1, 0, 2]]
    num = den = 0.0
    for b in range(2):
        for q in range(3):
            row = outputs["pred_logits"][b, q].tolist()
            nll = math.log(sum(math.exp(v) for v in row)) - row[target[b][q]]
            w = 0.1 if target[b][q] == 2 else 1.0
            num, den = num + w * nll, den + w
    torch.testing.assert_close(losses["loss_ce"], torch.tensor(num / den))
    assert crit.last_matchings["final"] is matching


def test_proposal_loss_is_unweighted_mean_ce():
    crit = SetCriterion(2, HungarianMatcher())
    logits = torch.randn(1, 3, 2, 2)
    gt = torch.zeros(1, 32, 32, dtype=torch.bool)
    gt[0, 20:, 20:] = True  # only cell (1, 1) -> flat pixel 3
    loss = crit.loss_proposal(
        logits, [{"labels": torch.tensor([0]), "masks": gt}], [(torch.tensor([3]), torch.tensor([0]))]
    )
    lp = logits[0].flatten(1).T.log_softmax(-1)  # (4, 3)
    manual = -(lp[0, 2] + lp[1, 2] + lp[2, 2] + lp[3, 0]) / 4
    torch.testing.assert_close(loss, manual)


def test_forward_draw_order_matching_reuse_and_names():
    outputs, targets, matching = batch()
    outputs["proposal_cls_logits"] = torch.randn(2, 3, 1, 1)
    outputs["pred_matching_indices"] = None
    outputs["aux_outputs"] = [
        {
            **{k: outputs[k].clone() for k in ("pred_logits", "pred_masks", "query_locations")},
            "pred_matching_indices": matching,
        },  # guided: no matcher call
        {
            **{k: outputs[k].clone() for k in ("pred_logits", "pred_masks", "query_locations")},
            "pred_matching_indices": None,
        },
    ]
    calls = []

    def rand(*shape, device=None):
        calls.append(shape)
        return torch.rand(*shape, device=device)

    crit = SetCriterion(2, HungarianMatcher(num_points=16), num_points=16)
    losses = crit(outputs, targets, rand=rand)
    match, over, fresh = (1, 16, 2), (3, 48, 2), (3, 4, 2)
    assert calls == [match, match, over, fresh, over, fresh, match, match, over, fresh]
    assert list(losses) == [
        "loss_proposal",
        "loss_ce",
        "loss_mask",
        "loss_dice",
        "loss_ce_0",
        "loss_mask_0",
        "loss_dice_0",
        "loss_ce_1",
        "loss_mask_1",
        "loss_dice_1",
    ]
    assert set(crit.last_matchings) == {"proposal", "final", "aux_0", "aux_1"}
    assert crit.last_matchings["aux_0"] is matching
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())


def test_gradients_reach_every_prediction():
    outputs, targets, _ = batch()
    outputs = {k: v.clone().requires_grad_(k != "query_locations") for k, v in outputs.items()}
    outputs["proposal_cls_logits"] = torch.randn(2, 3, 1, 1, requires_grad=True)
    crit = SetCriterion(2, HungarianMatcher(num_points=16), num_points=16)
    total = weighted_total(crit(outputs, targets), crit.weight_dict)
    total.backward()
    for k in ("pred_logits", "pred_masks", "proposal_cls_logits"):
        assert outputs[k].grad is not None and outputs[k].grad.abs().sum() > 0, k
