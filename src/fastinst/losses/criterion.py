"""FastInst training losses (SPEC §3.4–3.5): proposal CE, then class CE + point-sampled mask BCE/dice per output.

`SetCriterion(...)(outputs, targets, rand)` returns the **unweighted** losses: `loss_proposal`, `loss_ce`,
`loss_mask`, `loss_dice` for the final output and `loss_{ce,mask,dice}_{k}` for each `aux_outputs[k]`.
`build_weight_dict` gives the matching weights and `weighted_total` their weighted sum. The matchings used are kept
in `criterion.last_matchings` (`proposal`, `final`, `aux_{k}`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .matcher import HungarianMatcher, Matching, proposal_match
from .points import RandFn, point_sample, uncertain_points

__all__ = ["SetCriterion", "build_weight_dict", "dice_loss", "num_masks_of", "sigmoid_bce_loss", "weighted_total"]


def build_weight_dict(
    class_w: float = 2.0, mask_w: float = 5.0, dice_w: float = 5.0, proposal_w: float = 20.0, num_aux: int = 0
) -> dict[str, float]:
    """Loss weights in the official key order: final, `_0.._{num_aux-1}`, then `loss_proposal`."""
    base = {"loss_ce": class_w, "loss_mask": mask_w, "loss_dice": dice_w}
    out = dict(base)
    for k in range(num_aux):
        out.update({f"{name}_{k}": w for name, w in base.items()})
    out["loss_proposal"] = proposal_w
    return out


def weighted_total(losses: dict[str, torch.Tensor], weight_dict: dict[str, float]) -> torch.Tensor:
    """Σ weight·loss over the losses that have a weight (others are ignored)."""
    terms = [losses[k] * w for k, w in weight_dict.items() if k in losses]
    if not terms:
        raise ValueError("weighted_total: no loss has a weight")
    return torch.stack([t.reshape(()) for t in terms]).sum()


def sigmoid_bce_loss(logits: torch.Tensor, labels: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Σ over masks of the mean-over-points sigmoid BCE, ÷ num_masks: logits, labels (N, P) -> scalar."""
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (N, P)
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Σ over masks of `1 - (2Σpy + 1)/(Σp + Σy + 1)` with p = sigmoid(logits), ÷ num_masks: (N, P) -> scalar."""
    prob = logits.sigmoid()
    inter = 2.0 * (prob * labels).sum(-1)  # (N,)
    total = prob.sum(-1) + labels.sum(-1)  # (N,)
    return (1.0 - (inter + 1.0) / (total + 1.0)).sum() / num_masks


def num_masks_of(targets: list[dict], device: torch.device) -> float:
    """Total GT count of the batch; under torch.distributed the mean over processes; at least 1."""
    n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], dtype=torch.float, device=device)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(n)
        world = torch.distributed.get_world_size()
    return torch.clamp(n / world, min=1).item()


def _flat_index(matching: Matching, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (src, _) -> (image index, src index) over the batch, both (M,)."""
    batch = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(matching)])
    src = torch.cat([src for src, _ in matching])
    return batch.to(device), src.to(device)


class SetCriterion(nn.Module):
    """Unweighted FastInst losses; `empty_weight` (ones, last = eos_coef) is a persistent buffer."""

    empty_weight: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        proposal_weight: float = 20.0,
        weight_dict: dict[str, float] | None = None,
        num_aux: int = 0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        if weight_dict is None:
            weight_dict = build_weight_dict(
                matcher.cost_class, matcher.cost_mask, matcher.cost_dice, proposal_weight, num_aux
            )
        self.weight_dict = dict(weight_dict)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)
        self.last_matchings: dict[str, Matching] = {}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, num_points={self.num_points}, "
            f"oversample_ratio={self.oversample_ratio}, importance_sample_ratio={self.importance_sample_ratio}"
        )

    # -- individual losses --------------------------------------------------------------------------------------

    def loss_proposal(self, proposal_logits: torch.Tensor, targets: list[dict], matching: Matching) -> torch.Tensor:
        """Unweighted CE over all B·h16·w16 pixels; background everywhere except the matched pixels."""
        logits = proposal_logits.float().flatten(2)  # (B, K+1, HW16)
        target = torch.full(logits.shape[::2], self.num_classes, dtype=torch.long, device=logits.device)  # (B, HW16)
        for b, ((pix, tgt), t) in enumerate(zip(matching, targets, strict=True)):
            target[b, pix.to(logits.device)] = t["labels"][tgt.to(t["labels"].device)].to(logits.device)
        return F.cross_entropy(logits, target)

    def loss_labels(self, pred_logits: torch.Tensor, targets: list[dict], matching: Matching) -> torch.Tensor:
        """CE over all B·Q queries with `empty_weight` (weighted mean); unmatched queries target no-object."""
        logits = pred_logits.float()  # (B, Q, K+1)
        target = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)  # (B, Q)
        bi, si = _flat_index(matching, logits.device)
        target[bi, si] = torch.cat(
            [
                t["labels"][tgt.to(t["labels"].device)].to(logits.device)
                for t, (_, tgt) in zip(targets, matching, strict=True)
            ]
        )
        return F.cross_entropy(logits.transpose(1, 2), target, self.empty_weight)

    def loss_masks(
        self, pred_masks: torch.Tensor, targets: list[dict], matching: Matching, num_masks: float, rand: RandFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Point-sampled (BCE, dice) of the matched masks, each ÷ num_masks; draws the two loss-point tensors."""
        bi, si = _flat_index(matching, pred_masks.device)
        src = pred_masks[bi, si][:, None]  # (M, 1, h8, w8)
        gt = torch.cat([t["masks"][tgt.to(t["masks"].device)] for t, (_, tgt) in zip(targets, matching, strict=True)])
        gt = gt.to(device=src.device, dtype=src.dtype)[:, None]  # (M, 1, Hpad, Wpad)
        with torch.no_grad():
            coords = uncertain_points(
                src, self.num_points, self.oversample_ratio, self.importance_sample_ratio, rand
            )  # (M, P, 2)
            labels = point_sample(gt, coords)[:, 0]  # (M, P)
        logits = point_sample(src, coords)[:, 0]  # (M, P)
        return sigmoid_bce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)

    # -- forward ------------------------------------------------------------------------------------------------

    def output_losses(
        self, out: dict, targets: list[dict], matching: Matching, num_masks: float, rand: RandFn, suffix: str = ""
    ) -> dict[str, torch.Tensor]:
        loss_mask, loss_dice = self.loss_masks(out["pred_masks"], targets, matching, num_masks, rand)
        return {
            f"loss_ce{suffix}": self.loss_labels(out["pred_logits"], targets, matching),
            f"loss_mask{suffix}": loss_mask,
            f"loss_dice{suffix}": loss_dice,
        }

    def forward(self, outputs: dict, targets: list[dict], rand: RandFn = torch.rand) -> dict[str, torch.Tensor]:
        """outputs: the decoder's training dict (SPEC §2.4.8); targets: per image labels (N,), masks (N,Hpad,Wpad).
        -> unweighted losses. Random draws: final matcher, final loss points, then per aux output the same."""
        self.last_matchings = {}
        losses: dict[str, torch.Tensor] = {}
        num_masks = num_masks_of(targets, outputs["pred_logits"].device)
        if outputs.get("proposal_cls_logits") is not None:
            matching = proposal_match(
                outputs["proposal_cls_logits"], targets, self.matcher.cost_class, self.matcher.cost_location
            )
            self.last_matchings["proposal"] = matching
            losses["loss_proposal"] = self.loss_proposal(outputs["proposal_cls_logits"], targets, matching)
        items = [("final", "", outputs)] + [
            (f"aux_{k}", f"_{k}", aux) for k, aux in enumerate(outputs.get("aux_outputs") or [])
        ]
        for name, suffix, out in items:
            matching = out.get("pred_matching_indices")
            if matching is None:
                matching = self.matcher(out, targets, rand=rand)
            self.last_matchings[name] = matching
            losses.update(self.output_losses(out, targets, matching, num_masks, rand, suffix))
        return losses
