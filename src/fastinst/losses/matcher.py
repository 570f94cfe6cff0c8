"""Hungarian matching of predictions to ground truth (SPEC §3.2 proposals, §3.3 decoder outputs).

`HungarianMatcher(...)(outputs, targets, rand)` matches the 100 query predictions of each image to its GT
instances with cost `2*class + 5*mask_bce + 5*dice + 1000*location` evaluated on random points shared by all
queries and GTs of the image; `proposal_match` matches the stride-16 proposal pixels to the GT instances.
Both return, per image, `(src, tgt)` int64 index tensors in scipy's order (sorted by `src`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .points import RandFn, point_sample

Matching = list[tuple[torch.Tensor, torch.Tensor]]

__all__ = ["HungarianMatcher", "Matching", "location_cost", "pairwise_bce_cost", "pairwise_dice_cost", "proposal_match"]


def pairwise_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid-BCE of every prediction against every target: logits (Q, P), targets (N, P) -> (Q, N)."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")  # (Q, P)
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")  # (Q, P)
    return (pos @ targets.T + neg @ (1.0 - targets).T) / logits.shape[1]


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft dice loss (+1 smoothing) of every prediction against every target: (Q, P), (N, P) -> (Q, N)."""
    prob = logits.sigmoid()
    inter = 2.0 * (prob @ targets.T)  # (Q, N)
    total = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]  # (Q, N)
    return 1.0 - (inter + 1.0) / (total + 1.0)


def location_cost(gt_masks: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """-1 where a query's location lies inside a GT mask, else 0: gt (N, H, W), locations (Q, 2) xy -> (Q, N).

    "Inside" means the bilinear (`align_corners=False`, zero-padded) sample of the mask at the location is > 0.
    """
    n, q = gt_masks.shape[0], locations.shape[0]
    vals = point_sample(gt_masks[:, None].float(), locations[None].float().expand(n, q, 2))  # (N, 1, Q)
    return -(vals[:, 0] > 0).float().T  # (Q, N)


def _assign(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scipy `linear_sum_assignment` on a (rows, cols) cost -> int64 (src, tgt) tensors.

    Non-finite costs (a diverged network) are replaced by large finite ones so the step can finish and the trainer's
    NaN check can report the loss term instead of scipy failing here."""
    c = cost.detach().float().cpu().numpy()
    if not np.isfinite(c).all():
        c = np.nan_to_num(c, nan=1e8, posinf=1e8, neginf=-1e8)
    rows, cols = linear_sum_assignment(c)
    return torch.as_tensor(np.asarray(rows), dtype=torch.int64), torch.as_tensor(np.asarray(cols), dtype=torch.int64)


def _empty() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)


class HungarianMatcher:
    """Per-image optimal matching of the query predictions to the GT instances (SPEC §3.3)."""

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        cost_location: float = 1000.0,
        num_points: int = 12544,
    ):
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.cost_location = cost_location
        self.num_points = num_points

    def __repr__(self) -> str:
        return (
            f"HungarianMatcher(cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, cost_location={self.cost_location}, num_points={self.num_points})"
        )

    def cost_matrix(self, outputs: dict, targets: list[dict], b: int, rand: RandFn = torch.rand) -> torch.Tensor:
        """The (Q, N) matching cost of image `b`; draws `rand(1, num_points, 2)` once, even when N == 0."""
        logits = outputs["pred_logits"][b].float()  # (Q, K+1)
        masks = outputs["pred_masks"][b]  # (Q, h8, w8)
        labels = targets[b]["labels"]  # (N,)
        gt = targets[b]["masks"]  # (N, Hpad, Wpad)
        pts = rand(1, self.num_points, 2, device=masks.device)  # (1, P, 2)
        q, n = masks.shape[0], labels.shape[0]
        if n == 0:
            return logits.new_zeros(q, 0)
        with torch.autocast(device_type=masks.device.type, enabled=False):
            cost_class = -logits.softmax(-1)[:, labels]  # (Q, N)
            gt = gt.float()
            t = point_sample(gt[:, None], pts.float().expand(n, -1, -1))[:, 0]  # (N, P)
            m = point_sample(masks[:, None].float(), pts.float().expand(q, -1, -1))[:, 0]  # (Q, P)
            cost = (
                self.cost_mask * pairwise_bce_cost(m, t)
                + self.cost_class * cost_class
                + self.cost_dice * pairwise_dice_cost(m, t)
            )
            locations = outputs.get("query_locations")
            if locations is not None:
                cost = cost + self.cost_location * location_cost(gt, locations[b])
        return cost

    @torch.no_grad()
    def __call__(
        self, outputs: dict, targets: list[dict], rand: RandFn = torch.rand
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """outputs: pred_logits (B,Q,K+1), pred_masks (B,Q,h8,w8), optional query_locations (B,Q,2) in [0,1] xy;
        targets: per image labels (N,), masks (N,Hpad,Wpad). -> per image (src query idx, tgt idx), int64."""
        result = []
        for b in range(outputs["pred_logits"].shape[0]):
            cost = self.cost_matrix(outputs, targets, b, rand)
            result.append(_assign(cost) if cost.shape[1] else _empty())
        return result


@torch.no_grad()
def proposal_match(
    proposal_logits: torch.Tensor, targets: list[dict], cost_class: float = 2.0, cost_location: float = 1000.0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Match stride-16 proposal pixels to GT instances (SPEC §3.2): logits (B, K+1, h16, w16) ->
    per image (flat pixel index into h16*w16, tgt idx), int64. Uses no random numbers."""
    h16, w16 = proposal_logits.shape[-2:]
    result = []
    for b, t in enumerate(targets):
        labels = t["labels"]
        if labels.shape[0] == 0:
            result.append(_empty())
            continue
        with torch.autocast(device_type=proposal_logits.device.type, enabled=False):
            prob = proposal_logits[b].float().flatten(1).T.softmax(-1)  # (HW16, K+1)
            pooled = F.adaptive_avg_pool2d(t["masks"][:, None].float(), (h16, w16))  # (N, 1, h16, w16)
            inside = (pooled.flatten(1) > 0).float().T  # (HW16, N)
            cost = cost_class * -prob[:, labels] + cost_location * -inside  # (HW16, N)
        result.append(_assign(cost))
    return result
