"""Eval-mode parity: our resize, network outputs and instances against the official ones stored in a fixture."""

from __future__ import annotations

import re

import numpy as np
import torch

from fastinst.model.preprocess import resize_image, resize_shape

from .compare import Row, compare_array
from .fixture import Fixture, eval_batch, unpack_masks

__all__ = ["check_eval"]

# Official outputs, by the fixture key they are stored under (before any `.every{k}` / `.everyq{k}` suffix).
_OUTPUTS = {
    "eval.backbone.res3": lambda f, p, o: f["res3"],
    "eval.backbone.res4": lambda f, p, o: f["res4"],
    "eval.backbone.res5": lambda f, p, o: f["res5"],
    "eval.pixel_decoder.E5": lambda f, p, o: p[0],
    "eval.pixel_decoder.E4": lambda f, p, o: p[1],
    "eval.pixel_decoder.E3": lambda f, p, o: p[2],
    "eval.proposal_cls_logits": lambda f, p, o: o["proposal_cls_logits"],
    "eval.pred_logits": lambda f, p, o: o["pred_logits"],
    "eval.pred_masks": lambda f, p, o: o["pred_masks"],
}


def _subsample(t: torch.Tensor, key: str) -> torch.Tensor:
    """Apply a key's storage suffix: `.every{k}` keeps channels [:, ::k], `.everyq{k}` queries [:, ::k]."""
    if m := re.search(r"\.everyq?(\d+)$", key):
        return t[:, :: int(m.group(1))]
    return t


def check_eval(fx: Fixture, model: torch.nn.Module, rel32: float = 1e-3, rel16: float = 2e-3) -> list[Row]:
    """One row per stored eval quantity (README tolerances: float32 1e-3, float16-stored 2e-3 of the scale)."""
    variant = fx.meta["variant"]
    rows, resized = [], []
    for i in range(fx.num_images):
        original = fx[f"input.{i}.original"]
        ours = resize_image(
            original, resize_shape(*original.shape[:2], variant["min_size_test"], variant["max_size_test"])
        )
        resized.append(ours)
        if f"input.{i}.resized" in fx:
            rows.append(compare_array(f"input.{i}.resized", ours, fx[f"input.{i}.resized"], 0.0))
        elif "resized_hw" in fx.meta["images"][i]:
            same = list(ours.shape[:2]) == list(fx.meta["images"][i]["resized_hw"])
            rows.append(Row(f"input.{i}.resized (shape)", 0.0 if same else 1.0, 0, 0, same, str(ours.shape[:2])))
    batch = eval_batch(fx, resized)
    with torch.inference_mode():
        images, sizes = model.preprocess(batch)
        feats = model.backbone(images)
        pix = model.sem_seg_head.pixel_decoder(feats)
        out = model.sem_seg_head.predictor(pix)
        results = model.postprocess(out, batch, images.shape[-2:], sizes)
    same_pad = list(images.shape) == fx.meta["padded_batch_shape"]
    rows.append(Row("padded_batch_shape", 0.0 if same_pad else 1.0, 0, 0, same_pad, str(list(images.shape))))
    named = dict(_OUTPUTS)
    for j in range(len(out["aux_outputs"])):
        named[f"eval.aux.{j}.pred_masks"] = lambda f, p, o, j=j: o["aux_outputs"][j]["pred_masks"]
    for key in sorted(fx.arrays):
        base = re.sub(r"\.everyq?\d+$", "", key)
        if base in named:
            ref = fx[key]
            ours_t = _subsample(named[base](feats, pix, out), key)
            rows.append(compare_array(key, ours_t, ref, rel16 if ref.dtype == np.float16 else rel32))
    if "eval.query_proposal.topk_indices" in fx:
        ref = fx["eval.query_proposal.topk_indices"]
        ours_idx = out["query_proposal_indices"].cpu().numpy()
        same = all(set(a.tolist()) == set(b.tolist()) for a, b in zip(ours_idx, ref, strict=True))
        rows.append(Row("eval.query_proposal.topk_indices", 0.0 if same else 1.0, 0, 0, same, "as sets per image"))
    for i in range(fx.num_images):
        if f"eval.instances.{i}.topk_flat_index" in fx:
            rows += _compare_instances(fx, i, results[i], model.num_classes)
    return rows


def _compare_instances(fx: Fixture, i: int, res: dict, num_classes: int) -> list[Row]:
    """Instances as sets keyed by query*K+class (the official top-k order is unspecified): masks IoU, scores."""
    p = f"eval.instances.{i}"
    ref_idx, ref_scores = fx[f"{p}.topk_flat_index"], fx[f"{p}.scores"]
    ref_masks = unpack_masks(fx, f"{p}.pred_masks")
    ours_idx = (res["queries"] * num_classes + res["labels"]).cpu().numpy()
    pos = {int(k): n for n, k in enumerate(ours_idx)}
    same_set = set(pos) == set(ref_idx.tolist())
    worst_iou, worst_score = 1.0, 0.0
    for r, k in enumerate(ref_idx):
        if int(k) not in pos:
            continue
        n = pos[int(k)]
        a, b = res["masks"][n].cpu().numpy(), ref_masks[r]
        union = np.logical_or(a, b).sum()
        iou = 1.0 if union == 0 else np.logical_and(a, b).sum() / union
        worst_iou = min(worst_iou, float(iou))
        worst_score = max(worst_score, abs(float(res["scores"][n]) - float(ref_scores[r])))
    scale = float(np.abs(ref_scores).max())
    return [
        Row(f"{p} (set of query*K+class)", 0.0 if same_set else 1.0, 0, 0, same_set, f"{len(pos)} instances"),
        Row(f"{p}.masks (1 - worst IoU)", 1.0 - worst_iou, 1.0, 0.01, worst_iou >= 0.99),
        Row(f"{p}.scores", worst_score, scale, 1e-4, worst_score <= 1e-4),
    ]
