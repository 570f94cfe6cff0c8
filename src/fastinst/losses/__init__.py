"""FastInst training losses: point sampling, Hungarian matching, and the set criterion (SPEC §3)."""

from __future__ import annotations

from .criterion import SetCriterion, build_weight_dict, dice_loss, sigmoid_bce_loss, weighted_total
from .matcher import HungarianMatcher, proposal_match
from .points import ReplayRand, point_sample, uncertain_points

__all__ = [
    "HungarianMatcher",
    "ReplayRand",
    "SetCriterion",
    "build_weight_dict",
    "dice_loss",
    "point_sample",
    "proposal_match",
    "sigmoid_bce_loss",
    "uncertain_points",
    "weighted_total",
]
