"""The metrics of a finished pycocotools evaluation, shared by mask AP (`fastinst.engine.evaluator`) and Boundary AP
(`fastinst.engine.boundary`): both run a `COCOeval` ("segm") and report its numbers the same way.

`summary_metrics(ev, gt)` -> the 12 summary numbers by name (`METRIC_NAMES`: AP, AP50, ..., ARl), `per_class` (AP
per category, by name) and `pr_curves` (mean precision over the categories at each of pycocotools' 101 recall points,
at IoU 0.50 and 0.75). Metrics are in percent; a metric pycocotools reports as -1 (no ground truth in that area range
or category) is NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""The names of `COCOeval.stats`, in its order (the 12 lines `COCOeval.summarize` prints)."""


def percent(value: float) -> float:
    """A pycocotools fraction in percent; its -1 ("no ground truth to score") is NaN."""
    return float(value * 100) if value >= 0 else float("nan")


def summary_metrics(ev: COCOeval, gt: COCO) -> dict:
    """The metrics of an evaluated, accumulated and summarized `ev` on ground truth `gt` (see the module docstring)."""
    metrics: dict[str, Any] = {k: percent(v) for k, v in zip(METRIC_NAMES, ev.stats, strict=True)}
    precision = ev.eval["precision"]  # (IoU T, recall R, class K, area A, maxDets M)
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[str(gt.cats[cid].get("name", cid))] = float(np.mean(p) * 100) if p.size else float("nan")
    metrics["per_class"] = per_class
    curves = {}
    for key, thr in (("iou50", 0.5), ("iou75", 0.75)):
        t = int(np.argmin(np.abs(ev.params.iouThrs - thr)))
        p = precision[t, :, :, 0, -1]  # (R, K)
        valid = (p > -1).any(axis=0)
        mean = p[:, valid].mean(axis=1) if valid.any() else np.zeros(len(ev.params.recThrs))
        curves[key] = {"recall": [float(r) for r in ev.params.recThrs], "precision": [float(v) for v in mean]}
    metrics["pr_curves"] = curves
    return metrics
