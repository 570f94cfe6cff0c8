"""FastInst training losses: point sampling, Hungarian matching, and the set criterion (SPEC §3)."""
from __future__ import annotations

from .criterion import SetCriterion, build_weight_dict, dice_loss, sigmoid_bce_loss, weighted_total
from .matcher import HungarianMatcher, proposal_match
from .points import ReplayRand, point_sample, uncertain_points

__all__ = ["SetCriterion", "build_weight_dict", "weighted_total", "dice_loss", "sigmoid_bce_loss",
           "HungarianMatcher", "proposal_match", "ReplayRand", "point_sample", "uncertain_points"]
