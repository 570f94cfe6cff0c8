"""Official-implementation fixtures: proposal matching/loss without the model, full training parity with it.

The proposal head is the same in training and eval, so `eval.proposal_cls_logits` plus the GT reproduce
`train.match.proposal.*` and `train.loss.loss_proposal` without running the model. The full check replays the
recorded random draws through the model's training forward (`fastinst.losses.parity.check_train_parity`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import FIXTURE_DIRS
from fastinst.losses.criterion import SetCriterion
from fastinst.losses.matcher import HungarianMatcher, proposal_match
from fastinst.losses.parity import check_train_parity, fixture_batch, fixture_replay

pytestmark = pytest.mark.skipif(not FIXTURE_DIRS, reason="no fixtures")

# The full training forward takes ~10 s per fixture on 2 cores: by default run the D1 fixtures and one D3 one
# (keeps this file near a minute); FASTINST_FULL_PARITY=1 runs every fixture.
QUICK = ("fastinst_R50_ppm-fpn_x1_576", "fastinst_R50-vd-dcn_ppm-fpn_x1_576", "fastinst_R50_ppm-fpn_x3_640")
TRAIN_DIRS = [
    p for p in FIXTURE_DIRS if os.environ.get("FASTINST_FULL_PARITY") == "1" or p.name.rsplit("-s", 1)[0] in QUICK
]


def padded_targets(npz) -> list[dict]:
    meta = json.loads(str(npz["meta_json"]))
    hp, wp = meta["padded_batch_shape"][-2:]
    targets = []
    for item in fixture_batch(npz):
        masks = item["instances"]["masks"]
        full = torch.zeros(masks.shape[0], hp, wp, dtype=torch.bool)
        full[:, : masks.shape[1], : masks.shape[2]] = masks
        targets.append({"labels": item["instances"]["labels"], "masks": full})
    return targets


@pytest.mark.parametrize("fixture", FIXTURE_DIRS, ids=lambda p: p.name)
def test_proposal_matching_and_loss_from_eval_logits(fixture):
    npz = np.load(fixture / "reference.npz")
    if "train.loss.loss_proposal" not in npz.files:
        pytest.skip("fixture has no training part")
    logits = torch.from_numpy(npz["eval.proposal_cls_logits"])
    targets = padded_targets(npz)
    matching = proposal_match(logits, targets)
    for i, (pix, tgt) in enumerate(matching):
        assert np.array_equal(np.stack([pix.numpy(), tgt.numpy()]), npz[f"train.match.proposal.{i}"])
    loss = SetCriterion(80, HungarianMatcher()).loss_proposal(logits, targets, matching)
    ref = float(npz["train.loss.loss_proposal"])
    assert abs(loss.item() - ref) <= 1e-5 * abs(ref)


@pytest.mark.parametrize("fixture", FIXTURE_DIRS, ids=lambda p: p.name)
def test_recorded_draws_fit_the_call_pattern(fixture):
    npz = np.load(fixture / "reference.npz")
    replay = fixture_replay(npz)
    if not replay.draws:
        pytest.skip("fixture has no training part")
    n_gt = sum(len(item["instances"]["labels"]) for item in fixture_batch(npz))
    for draw, role in zip(replay.draws, replay.roles):
        if "matcher" in role:
            assert draw.shape == (1, 12544, 2), role
        elif "oversampled" in role:
            assert draw.shape == (n_gt, 3 * 12544, 2), role
        else:
            assert draw.shape == (n_gt, 12544 - int(0.75 * 12544), 2), role


@pytest.mark.parametrize("fixture", TRAIN_DIRS, ids=lambda p: p.name)
def test_training_losses_and_matchings_match_official(fixture):
    parity = pytest.importorskip("fastinst.parity")
    if "train.loss.loss_ce" not in np.load(fixture / "reference.npz").files:
        pytest.skip("fixture has no training part")
    _, _, model = parity.load_fixture(fixture)
    rows = check_train_parity(fixture, model)
    bad = [r.format() for r in rows if not r.ok]
    assert rows and not bad, "\n".join(bad)
