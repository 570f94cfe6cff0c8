"""Deliberate bugs in the losses, to show which tests catch them: a pytest plugin.

    python -m pytest -p parity.mutations --mutation dice-smoothing tests/losses

`--mutation NAME` patches one function of `fastinst.losses` before the tests are collected (test modules then import
the patched one). `tools/mutation_table.py` runs every mutation and prints which tests failed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import fastinst.losses.criterion as criterion
import fastinst.losses.matcher as matcher
import fastinst.losses.points as points


def _dice_smoothing() -> None:
    """dice = 1 - 2Σpy / (Σp + Σy): the +1 smoothing dropped from numerator and denominator."""

    def dice_loss(logits, labels, num_masks):
        prob = logits.sigmoid()
        return (1.0 - 2.0 * (prob * labels).sum(-1) / (prob.sum(-1) + labels.sum(-1))).sum() / num_masks

    criterion.dice_loss = dice_loss


def _bce_unnormalised() -> None:
    """The point BCE summed over masks without the ÷ num_masks."""

    def sigmoid_bce_loss(logits, labels, num_masks):
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum()

    criterion.sigmoid_bce_loss = sigmoid_bce_loss


def _mask_weight_dropped() -> None:
    """The mask BCE term enters the weighted loss unweighted (weight 1 instead of 5)."""
    build = criterion.build_weight_dict

    def build_weight_dict(*args, **kwargs):
        return {k: (1.0 if k.startswith("loss_mask") else w) for k, w in build(*args, **kwargs).items()}

    criterion.build_weight_dict = build_weight_dict
    import fastinst.model.fastinst as meta

    meta.build_weight_dict = build_weight_dict


def _aux_dropped() -> None:
    """The last auxiliary output gets no loss."""
    forward = criterion.SetCriterion.forward

    def dropping(self, outputs, targets, rand=torch.rand):
        if outputs.get("aux_outputs"):
            outputs = {**outputs, "aux_outputs": outputs["aux_outputs"][:-1]}
        return forward(self, outputs, targets, rand)

    criterion.SetCriterion.forward = dropping


def _matching_transposed() -> None:
    """The Hungarian matcher returns (gt index, query index) instead of (query index, gt index)."""
    call = matcher.HungarianMatcher.__call__

    def transposed(self, *args, **kwargs):
        return [(tgt, src) for src, tgt in call(self, *args, **kwargs)]

    matcher.HungarianMatcher.__call__ = transposed


def _uncertainty_sign() -> None:
    """Importance sampling keeps the most certain points (+|logit|) instead of the most uncertain."""

    def uncertain_points(logits, num_points, oversample_ratio, importance_ratio, rand=torch.rand):
        n = logits.shape[0]
        cand = rand(n, int(num_points * oversample_ratio), 2, device=logits.device)
        score = points.point_sample(logits, cand).abs()[:, 0]
        k = int(importance_ratio * num_points)
        top = torch.topk(score, k=k, dim=1).indices
        chosen = torch.gather(cand, 1, top[..., None].expand(-1, -1, 2))
        fresh = rand(n, num_points - k, 2, device=logits.device)
        return torch.cat([chosen, fresh], dim=1)

    points.uncertain_points = uncertain_points
    criterion.uncertain_points = uncertain_points


def _class_weight_dropped() -> None:
    """The classification CE ignores `empty_weight` (no-object weighted 1 instead of 0.1)."""

    def loss_labels(self, pred_logits, targets, matching):
        logits = pred_logits.float()
        target = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long)
        for b, ((src, tgt), t) in enumerate(zip(matching, targets, strict=True)):
            target[b, src] = t["labels"][tgt]
        return F.cross_entropy(logits.transpose(1, 2), target)

    criterion.SetCriterion.loss_labels = loss_labels


MUTATIONS: dict[str, Callable[[], None]] = {
    "dice-smoothing": _dice_smoothing,
    "bce-unnormalised": _bce_unnormalised,
    "mask-weight-dropped": _mask_weight_dropped,
    "aux-dropped": _aux_dropped,
    "matching-transposed": _matching_transposed,
    "uncertainty-sign": _uncertainty_sign,
    "class-weight-dropped": _class_weight_dropped,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--mutation", choices=sorted(MUTATIONS), help="apply one deliberate bug (tests/parity/mutations)")


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--mutation")
    if name:
        MUTATIONS[name]()
