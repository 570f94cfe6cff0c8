"""Instance inference (SPEC §2.6): top-k (query, class) pairs, score = class prob × mean mask prob, masks at full size.

The official code upsamples all Q mask logits to the padded size and then to the original size. Both resizes act on
each query independently, so `instances` runs them only for the queries the top-k keeps — same numbers, less work.
`instances_reference` is the straightforward version, kept for tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _full_size(logits: torch.Tensor, padded: tuple[int, int], resized: tuple[int, int], original: tuple[int, int]):
    """(n, h8, w8) stride-8 logits -> (n, H0, W0): upsample to the padded batch, crop to the image, resize."""
    x = F.interpolate(logits.unsqueeze(0), size=padded, mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    if tuple(resized) == tuple(original):  # a same-size bilinear resize is the identity: skip the copy
        return x[0]
    return F.interpolate(x, size=original, mode="bilinear", align_corners=False)[0]


def select(pred_logits: torch.Tensor, k: int):
    """(Q, K+1) logits -> scores (k,), labels (k,), query indices (k,) of the top-k (query, class) pairs, best first."""
    probs = pred_logits.float().softmax(-1)[:, :-1]  # drop "no object"
    num_classes = probs.shape[1]
    scores, flat = probs.flatten().topk(min(k, probs.numel()), sorted=True)
    return scores, flat % num_classes, flat // num_classes


def instances(pred_logits, pred_masks, padded, resized, original, k: int = 100) -> dict[str, torch.Tensor]:
    """One image: (Q, K+1), (Q, h8, w8) -> masks bool (k, H0, W0), scores (k,), labels (k,), queries (k,)."""
    scores, labels, queries = select(pred_logits, k)
    unique, inverse = queries.unique(return_inverse=True)
    probs = _full_size(pred_masks[unique].float(), padded, resized, original).sigmoid_()  # (u, H0, W0)
    binary = probs > 0.5
    # = (probs * binary).sum / binary.sum bit for bit, without float/int64 copies of the boolean masks
    mask_scores = probs.masked_fill_(~binary, 0).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return {"masks": binary[inverse], "scores": scores * mask_scores[inverse], "labels": labels, "queries": queries}


def instances_reference(pred_logits, pred_masks, padded, resized, original, k: int = 100) -> dict[str, torch.Tensor]:
    """The official order of operations on all Q masks (for tests and parity)."""
    full = _full_size(pred_masks.float(), padded, resized, original)  # (Q, H0, W0)
    scores, labels, queries = select(pred_logits, k)
    probs = full[queries].sigmoid()
    binary = (probs > 0.5).float()
    mask_scores = (probs * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return {"masks": binary.bool(), "scores": scores * mask_scores, "labels": labels, "queries": queries}
