"""Training-mode parity: losses, matchings and query locations against the official recorded forward.

The mask losses are evaluated on the `k` most uncertain (`-|logit|` largest) of an oversampled random point set.
Rounding differs between CPU kernels (AVX-512 vs AMX, oneDNN vs native convolutions, thread counts), so two
implementations that agree to 1e-6 on the logits can still disagree on which of two near-equal points is the k-th: a
handful of points differ, and the mean over 12,544 points moves by ~1e-4 — more than a tight tolerance, far less than
any real bug. So a mask loss is not compared as one number. For each matched mask we split the candidates by our
uncertainty `u` and the k-th value `t`:

* `u > t + 2δ`: kept by any implementation whose logits are within δ of ours (it is above their k-th value too);
* `u < t - 2δ`: dropped by any such implementation;
* the rest, the near-ties: the other implementation keeps some `r` of them, `r` fixed by the count of sure points.

The BCE and dice sums over the sure points and the fresh uniform points are exact; over the near-ties they lie
between the sum of the `r` smallest and the `r` largest per-point values. That gives an interval for each loss that
the official value must fall in (to `rel` of rounding), and it is as tight as the near-ties are few: with no
near-ties it is a point. δ is a bound on the logit discrepancy between CPU kernels, `logit_rel` × the output's largest
|logit| (see LOGIT_REL). Everything else — class and proposal losses, every matching, the query locations — is
compared directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastinst.losses.points import point_sample

from .compare import Row, compare_array, compare_matching
from .fixture import Fixture, fixture_draws, train_batch

__all__ = [
    "LOGIT_REL",
    "MAX_INTERVAL_REL",
    "MaskLossInputs",
    "check_train",
    "mask_loss_intervals",
    "run_training_forward",
]

# Logit discrepancy allowed between CPU kernels, relative to the output's largest |logit|. Measured on the matched
# masks' candidate points: 1e-6 to 3e-6 between oneDNN and native convolutions at 1 vs 2 threads; final eval masks vs
# the official ones 2e-6 (D1) and 1e-5 (D3, whole map). 2e-5 keeps a margin over both (tests/parity/README.md).
LOGIT_REL = 2e-5
# A tie interval wider than this share of the loss would no longer prove anything: the row fails instead.
MAX_INTERVAL_REL = 5e-3


@dataclass
class MaskLossInputs:
    """What one output's mask loss saw: its masks, the matching, the targets and the two point draws."""

    suffix: str
    pred_masks: torch.Tensor  # (B, Q, h8, w8)
    targets: list[dict]
    matching: list[tuple[torch.Tensor, torch.Tensor]]
    num_masks: float
    draws: list[torch.Tensor]  # [(M, S, 2) oversampled candidates, (M, R, 2) fresh uniform points]


@dataclass
class Interval:
    lo: float
    hi: float
    ties: int  # near-tie points over all masks
    swaps: int  # near-tie points the other implementation must pick (sum of r)


def _r_extremes(values: torch.Tensor, band: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum of the r smallest and of the r largest `values` among the `band` entries -> (M,), (M,)."""
    inf = torch.tensor(float("inf"), dtype=values.dtype)
    ascending = torch.where(band, values, inf).sort(dim=1).values  # band values first, then +inf
    descending = torch.where(band, values, -inf).sort(dim=1, descending=True).values
    take = torch.arange(values.shape[1])[None, :] < r[:, None]  # (M, S): the first r of each row
    low = torch.where(take, ascending, torch.zeros_like(values)).sum(1)
    high = torch.where(take, descending, torch.zeros_like(values)).sum(1)
    return low, high


def mask_loss_intervals(
    rec: MaskLossInputs, num_points: int, importance_ratio: float, delta: float
) -> tuple[Interval, Interval]:
    """The (BCE, dice) intervals any implementation whose logits are within `delta` of ours must fall in."""
    batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(rec.matching)])
    query_idx = torch.cat([src for src, _ in rec.matching])
    src = rec.pred_masks[batch_idx, query_idx][:, None].float()  # (M, 1, h8, w8)
    gt = torch.cat([t["masks"][tgt] for t, (_, tgt) in zip(rec.targets, rec.matching, strict=True)])
    gt = gt[:, None].to(src.dtype)  # (M, 1, Hpad, Wpad)
    cand = rec.draws[0]  # (M, S, 2)
    k = int(importance_ratio * num_points)

    logit = point_sample(src, cand)[:, 0]  # (M, S), as the criterion computes it
    label = point_sample(gt, cand)[:, 0].double()  # (M, S)
    u = -logit.abs()
    t = torch.topk(u, k, dim=1).values[:, -1:]  # (M, 1) our k-th uncertainty
    sure = u > t + 2 * delta
    band = (u >= t - 2 * delta) & ~sure
    r = k - sure.sum(1)  # (M,) near-ties the other implementation keeps

    def per_point(lg: torch.Tensor, lb: torch.Tensor) -> dict[str, torch.Tensor]:
        lg = lg.double()
        prob = lg.sigmoid()
        bce = F.binary_cross_entropy_with_logits(lg, lb, reduction="none")
        return {"bce": bce, "py": prob * lb, "p": prob, "y": lb}

    cand_terms = per_point(logit, label)
    fixed = {name: torch.where(sure, v, torch.zeros_like(v)).sum(1) for name, v in cand_terms.items()}
    if len(rec.draws) > 1:  # the fresh uniform points count in full
        fresh = rec.draws[1]
        fresh_terms = per_point(point_sample(src, fresh)[:, 0], point_sample(gt, fresh)[:, 0].double())
        fixed = {name: fixed[name] + v.sum(1) for name, v in fresh_terms.items()}
    ranges = {name: _r_extremes(v, band, r) for name, v in cand_terms.items()}

    bce_lo = ((fixed["bce"] + ranges["bce"][0]) / num_points).sum() / rec.num_masks
    bce_hi = ((fixed["bce"] + ranges["bce"][1]) / num_points).sum() / rec.num_masks
    # dice = 1 - (2Σpy + 1) / (Σp + Σy + 1): decreasing in Σpy, increasing in Σp + Σy
    inter_lo, inter_hi = 2 * (fixed["py"] + ranges["py"][0]), 2 * (fixed["py"] + ranges["py"][1])
    total_lo = fixed["p"] + ranges["p"][0] + fixed["y"] + ranges["y"][0]
    total_hi = fixed["p"] + ranges["p"][1] + fixed["y"] + ranges["y"][1]
    dice_lo = (1 - (inter_hi + 1) / (total_lo + 1)).sum() / rec.num_masks
    dice_hi = (1 - (inter_lo + 1) / (total_hi + 1)).sum() / rec.num_masks
    ties, swaps = int(band.sum()), int(r.sum())
    return Interval(float(bce_lo), float(bce_hi), ties, swaps), Interval(float(dice_lo), float(dice_hi), ties, swaps)


def _compare_interval(name: str, ours: float, ref: float, iv: Interval, rel: float) -> Row:
    """Both the official value and ours must lie in [lo, hi] widened by `rel` × |ref| of rounding: the official one
    proves our logits and point selection, ours proves our loss formulas (the interval is computed independently of
    them). diff is the larger distance outside [lo, hi]."""
    tol = rel * abs(ref)
    outside = max(iv.lo - ref, ref - iv.hi, iv.lo - ours, ours - iv.hi, 0.0)
    note = f"ours {ours:.7g}, tie interval [{iv.lo:.7g}, {iv.hi:.7g}] ({iv.swaps} of {iv.ties} near-ties kept)"
    if iv.hi - iv.lo > MAX_INTERVAL_REL * abs(ref):
        return Row(name, outside, abs(ref), tol, False, "tie interval too wide to prove the loss: " + note)
    return Row(name, outside, abs(ref), tol, outside <= tol, note)


def run_training_forward(fx: Fixture, model: torch.nn.Module):
    """The training forward on the fixture batch with its draws -> (weighted losses, mask-loss inputs, outputs)."""
    batch, replay = train_batch(fx), fixture_draws(fx)
    records: list[MaskLossInputs] = []
    captured: dict = {}
    criterion = model.criterion
    output_losses = criterion.output_losses

    def recording(out, targets, matching, num_masks, rand, suffix=""):
        start = replay.position
        losses = output_losses(out, targets, matching, num_masks, rand, suffix)
        draws = replay.draws[start : replay.position]
        records.append(MaskLossInputs(suffix, out["pred_masks"].detach(), targets, matching, num_masks, draws))
        return losses

    def keep_outputs(_module, _inputs, out):
        captured["outputs"] = out

    handle = model.sem_seg_head.predictor.register_forward_hook(keep_outputs)
    criterion.output_losses = recording
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            weighted = model(batch, rand=replay)
    finally:
        del criterion.output_losses
        handle.remove()
        model.train(was_training)
    return weighted, records, captured.get("outputs") or {}, replay


def check_train(
    fx: Fixture, model: torch.nn.Module, rel: float = 1e-5, rel_locations: float = 1e-3, logit_rel: float = LOGIT_REL
) -> list[Row]:
    """One row per recorded loss (unweighted and weighted), matching and the query locations."""
    weighted, records, outputs, replay = run_training_forward(fx, model)
    crit = model.criterion
    weights = crit.weight_dict
    rows = [
        Row(
            "train.rand (draws consumed)",
            float(replay.remaining),
            float(len(replay.draws)),
            0.0,
            replay.remaining == 0,
            f"{replay.position}/{len(replay.draws)} used",
        )
    ]
    intervals: dict[str, Interval] = {}
    for rec in records:
        delta = logit_rel * float(rec.pred_masks.abs().max())
        bce, dice = mask_loss_intervals(rec, crit.num_points, crit.importance_sample_ratio, delta)
        intervals[f"loss_mask{rec.suffix}"], intervals[f"loss_dice{rec.suffix}"] = bce, dice
    for key in sorted(fx.arrays):
        for prefix, unweighted in (("train.loss.", True), ("train.loss_weighted.", False)):
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :]
            if name not in weighted:
                rows.append(Row(key, float("inf"), 0.0, 0.0, False, "missing"))
                continue
            scale = 1.0 / weights[name] if unweighted else 1.0
            ours = weighted[name] * scale
            ref = float(fx[key])
            if name in intervals:
                iv = intervals[name]
                w = 1.0 if unweighted else weights[name]
                rows.append(
                    _compare_interval(key, float(ours), ref, Interval(iv.lo * w, iv.hi * w, iv.ties, iv.swaps), rel)
                )
            else:
                rows.append(compare_array(key, ours, np.asarray(ref), rel))
    produced = {k[len("train.loss.") :] for k in fx.arrays if k.startswith("train.loss.")}
    extra = sorted(set(weighted) - produced)
    if extra:
        rows.append(Row("train.loss (extra keys)", float(len(extra)), 0.0, 0.0, False, ", ".join(extra)))
    matchings = dict(crit.last_matchings)
    matchings.update(model.last_matching or {})
    for key in sorted(k for k in fx.arrays if k.startswith("train.match.")):
        output, i = key[len("train.match.") :].rsplit(".", 1)
        per_image = matchings.get(output)
        ours_m = per_image[int(i)] if per_image is not None and int(i) < len(per_image) else None
        rows.append(compare_matching(key, ours_m, fx[key]))
    if "train.query_locations" in fx:
        locations = outputs.get("query_locations")
        if locations is None:
            rows.append(Row("train.query_locations", float("inf"), 0.0, 0.0, False, "not produced"))
        else:
            rows.append(compare_array("train.query_locations", locations, fx["train.query_locations"], rel_locations))
    return rows
