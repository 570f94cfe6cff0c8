"""Training parity with the official implementation: losses, matchings and query locations.

The full training forward replays the official forward's random draws (stored in a full fixture, regenerated from
its torch seed for the in-repo compact one) and compares every loss, every matching and the query locations
(`parity.train.check_train`). Mask losses are compared through the tie interval of `parity.train`, which holds on
every CPU kind; `test_tie_interval_*` check that interval itself on synthetic data.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import COMPACT_FIXTURE, FIXTURE_DIRS, SHARED_MISSING, fixture_id
from fastinst.losses.criterion import SetCriterion, dice_loss, sigmoid_bce_loss
from fastinst.losses.matcher import HungarianMatcher, proposal_match
from fastinst.losses.points import point_sample
from parity.compare import format_rows
from parity.fixture import fixture_draws, fixture_model, open_fixture, train_batch
from parity.train import MaskLossInputs, check_train, mask_loss_intervals

needs_shared = pytest.mark.skipif(not FIXTURE_DIRS, reason=SHARED_MISSING)

# The full training forward takes 10-40 s per fixture on 2 cores: by default the compact fixture, the D1 fixtures and
# one D3 one; FASTINST_FULL_PARITY=1 runs every full fixture.
QUICK = ("fastinst_R50_ppm-fpn_x1_576", "fastinst_R50-vd-dcn_ppm-fpn_x1_576", "fastinst_R50_ppm-fpn_x3_640")
TRAIN_FIXTURES = [COMPACT_FIXTURE] + [
    p for p in FIXTURE_DIRS if os.environ.get("FASTINST_FULL_PARITY") == "1" or p.name.rsplit("-s", 1)[0] in QUICK
]


def padded_targets(fx) -> list[dict]:
    hp, wp = fx.meta["padded_batch_shape"][-2:]
    targets = []
    for item in train_batch(fx):
        masks = item["instances"]["masks"]
        full = torch.zeros(masks.shape[0], hp, wp, dtype=torch.bool)
        full[:, : masks.shape[1], : masks.shape[2]] = masks
        targets.append({"labels": item["instances"]["labels"], "masks": full})
    return targets


@needs_shared
@pytest.mark.parametrize("path", FIXTURE_DIRS, ids=fixture_id)
def test_proposal_matching_and_loss_from_eval_logits(path):
    """The proposal head is the same in training and eval: its stored eval logits reproduce the proposal loss."""
    fx = open_fixture(path)
    if "train.loss.loss_proposal" not in fx:
        pytest.skip("fixture has no training part")
    logits = torch.from_numpy(fx["eval.proposal_cls_logits"])
    targets = padded_targets(fx)
    matching = proposal_match(logits, targets)
    for i, (pix, tgt) in enumerate(matching):
        assert np.array_equal(np.stack([pix.numpy(), tgt.numpy()]), fx[f"train.match.proposal.{i}"])
    loss = SetCriterion(80, HungarianMatcher()).loss_proposal(logits, targets, matching)
    ref = float(fx["train.loss.loss_proposal"])
    assert abs(loss.item() - ref) <= 1e-5 * abs(ref)


@pytest.mark.parametrize("path", [COMPACT_FIXTURE, *FIXTURE_DIRS], ids=fixture_id)
def test_recorded_draws_fit_the_call_pattern(path):
    fx = open_fixture(path)
    replay = fixture_draws(fx)
    if not replay.draws:
        pytest.skip("fixture has no training part")
    n_gt = sum(len(item["instances"]["labels"]) for item in train_batch(fx))
    for draw, role in zip(replay.draws, replay.roles or [], strict=True):
        if "matcher" in role:
            assert draw.shape == (1, 12544, 2), role
        elif "oversampled" in role:
            assert draw.shape == (n_gt, 3 * 12544, 2), role
        else:
            assert draw.shape == (n_gt, 12544 - int(0.75 * 12544), 2), role


@needs_shared
def test_draws_regenerate_from_the_recorded_torch_seed():
    """What the compact fixture relies on: seeding torch as the official forward did gives the stored draws."""
    fx = open_fixture(FIXTURE_DIRS[0])
    stored = fixture_draws(fx).draws
    torch.manual_seed(int(fx.meta["train"]["train_torch_seed"]))
    for n, draw in enumerate(stored):
        assert torch.equal(torch.rand(*draw.shape), draw), n


@pytest.mark.parametrize("path", TRAIN_FIXTURES, ids=fixture_id)
def test_training_losses_and_matchings_match_official(path):
    fx = open_fixture(path)
    if not fx.has_training:
        pytest.skip("fixture has no training part")
    rows = check_train(fx, fixture_model(fx))
    assert any(r.name == "train.loss.loss_mask" for r in rows) and any("match.final" in r.name for r in rows)
    bad = [r for r in rows if not r.ok]
    assert not bad, format_rows(bad)


def test_training_parity_holds_with_other_kernels():
    """Native convolutions instead of oneDNN at one thread round differently, as another CPU kind does."""
    fx = open_fixture(COMPACT_FIXTURE)
    model = fixture_model(fx)
    mkldnn, threads = torch.backends.mkldnn.enabled, torch.get_num_threads()
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(1)
    try:
        rows = check_train(fx, model)
    finally:
        torch.backends.mkldnn.enabled = mkldnn
        torch.set_num_threads(threads)
    bad = [r for r in rows if not r.ok]
    assert not bad, format_rows(bad)


# ---------------------------------------------------------------------------------------------------------------------
# The tie interval on synthetic masks whose logits are quantised, so that exact ties at the k-th value are common
# ---------------------------------------------------------------------------------------------------------------------

NUM_POINTS, RATIO = 400, 0.75


def _synthetic_case(seed: int) -> tuple[MaskLossInputs, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    blocks = (torch.randn(2, 3, 3, 3, generator=gen) * 4).round() / 4  # logits on a 0.25 grid
    pred = blocks.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # (B, Q, 12, 12): flat 4x4 tiles
    gt = torch.rand(2, 2, 24, 24, generator=gen) > 0.5  # (B, N, H, W)
    matching = [(torch.tensor([0, 2]), torch.tensor([1, 0])), (torch.tensor([1]), torch.tensor([0]))]
    targets = [{"labels": torch.tensor([0, 1]), "masks": gt[0]}, {"labels": torch.tensor([1]), "masks": gt[1, :1]}]
    cand = torch.rand(3, 3 * NUM_POINTS, 2, generator=gen)
    fresh = torch.rand(3, NUM_POINTS - int(RATIO * NUM_POINTS), 2, generator=gen)
    return MaskLossInputs("", pred, targets, matching, 3.0, [cand, fresh]), gt


def _losses_of(rec: MaskLossInputs, pred: torch.Tensor) -> tuple[float, float]:
    """The criterion's point-sampled (BCE, dice) for masks `pred`, selecting the top-k on `pred` itself."""
    src = torch.stack([pred[b, q] for b, (qs, _) in enumerate(rec.matching) for q in qs])[:, None]
    gt = torch.cat([t["masks"][tgt] for t, (_, tgt) in zip(rec.targets, rec.matching, strict=True)])[:, None].float()
    uncertainty = -point_sample(src, rec.draws[0]).abs()[:, 0]
    top = torch.topk(uncertainty, int(RATIO * NUM_POINTS), dim=1).indices
    coords = torch.cat([torch.gather(rec.draws[0], 1, top[..., None].expand(-1, -1, 2)), rec.draws[1]], dim=1)
    logits, labels = point_sample(src, coords)[:, 0], point_sample(gt, coords)[:, 0]
    return float(sigmoid_bce_loss(logits, labels, rec.num_masks)), float(dice_loss(logits, labels, rec.num_masks))


def test_tie_interval_contains_every_near_tie_resolution():
    """Another implementation's logits (ours + noise below δ) pick other near-ties; its losses stay in the interval,
    while a plain 1e-5 comparison would have failed on some of the cases."""
    delta, plain_failures = 1e-4, 0
    for seed in range(12):
        rec, _ = _synthetic_case(seed)
        bce_iv, dice_iv = mask_loss_intervals(rec, NUM_POINTS, RATIO, delta)
        ours = _losses_of(rec, rec.pred_masks)
        noise = (torch.rand(rec.pred_masks.shape, generator=torch.Generator().manual_seed(100 + seed)) - 0.5) * delta
        theirs = _losses_of(rec, rec.pred_masks + noise)
        for value, iv in ((theirs[0], bce_iv), (theirs[1], dice_iv)):
            assert iv.lo - 1e-6 <= value <= iv.hi + 1e-6, (seed, value, iv)
        assert bce_iv.lo - 1e-6 <= ours[0] <= bce_iv.hi + 1e-6
        plain_failures += abs(theirs[0] - ours[0]) > 1e-5 * abs(ours[0])
    assert plain_failures >= 3


def test_tie_interval_is_a_point_without_ties_and_rejects_a_wrong_loss():
    rec, _ = _synthetic_case(0)
    rec.pred_masks = rec.pred_masks + torch.linspace(0, 1e-2, rec.pred_masks.numel()).view_as(rec.pred_masks)
    bce_iv, dice_iv = mask_loss_intervals(rec, NUM_POINTS, RATIO, 0.0)
    bce, dice = _losses_of(rec, rec.pred_masks)
    assert bce_iv.ties == bce_iv.swaps  # with δ = 0 only exact ties are near-ties, and all are kept
    assert bce_iv.hi - bce_iv.lo <= 1e-6 and bce_iv.lo - 1e-6 <= bce <= bce_iv.hi + 1e-6
    assert dice_iv.lo - 1e-6 <= dice <= dice_iv.hi + 1e-6
    # an unweighted or mis-normalised term falls far outside
    assert not (bce_iv.lo <= 1.5 * bce <= bce_iv.hi)
    wrong_dice = F.binary_cross_entropy_with_logits(torch.zeros(1), torch.ones(1)).item()
    assert not (dice_iv.lo <= wrong_dice <= dice_iv.hi)
