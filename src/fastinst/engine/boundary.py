"""Boundary AP (Cheng et al., "Boundary IoU", CVPR 2021): COCO evaluation whose matching IoU is
min(mask IoU, boundary IoU), as the FastInst repository reports it (`tools/evaluate_coco_boundary_ap.py`).

Definitions (those of the reference Boundary IoU API):

* dilation `d = max(1, round(dilation_ratio * sqrt(H**2 + W**2)))` pixels for an H x W image (ratio 0.02).
* the boundary region of a binary mask: the mask's pixels that lie within Chebyshev distance `d` of a pixel that is
  not in the mask, where everything outside the image counts as "not in the mask" (so a mask cut by the image border
  has a boundary along it). Equivalently: the mask minus its erosion by a (2d+1) x (2d+1) square with a zero border.
* boundary IoU of two masks: the IoU of their boundary regions (0 when both are empty).
* the evaluation is pycocotools' `COCOeval` with iouType "segm" in every respect (areas from the mask, crowd
  handling, area ranges, maxDets 1/10/100, 101 recall points, the 12-number summary) except that the IoU of a
  detection with a non-crowd ground truth is min(mask IoU, boundary IoU). Against a crowd region the IoU stays
  pycocotools' crowd mask IoU (intersection over the detection's area), the reference's rule.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..log import say
from .coco_metrics import summary_metrics

DILATION_RATIO = 0.02


def dilation_pixels(height: int, width: int, dilation_ratio: float = DILATION_RATIO) -> int:
    """The boundary width `d` for an image: `dilation_ratio` of its diagonal, rounded, at least 1."""
    return max(1, round(dilation_ratio * math.hypot(height, width)))


def _erode(a: np.ndarray, d: int) -> np.ndarray:
    """Erosion of a uint8 0/1 array by a (2d+1) x (2d+1) square, zeros outside `a` (two separable min filters)."""
    from scipy import ndimage

    size = 2 * d + 1
    rows = ndimage.minimum_filter1d(a, size, axis=0, mode="constant", cval=0)
    return ndimage.minimum_filter1d(rows, size, axis=1, mode="constant", cval=0)


def mask_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Boundary region (bool, same shape) of a bool (H, W) mask for a boundary width of `dilation` pixels.

    A mask pixel is kept unless its whole (2d+1)^2 window lies inside the image and inside the mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    out = np.zeros(mask.shape, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return out
    d = int(dilation)
    # only the mask's box matters; a margin of d keeps the erosion exact (the image border acts as zero padding)
    y0, y1 = max(int(rows[0]) - d, 0), min(int(rows[-1]) + d + 1, mask.shape[0])
    x0, x1 = max(int(cols[0]) - d, 0), min(int(cols[-1]) + d + 1, mask.shape[1])
    crop = mask[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = crop & ~_erode(crop.view(np.uint8), d).astype(bool)
    return out


def _encode(mask: np.ndarray) -> dict:
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


def boundary_rle(segmentation: dict, dilation_ratio: float = DILATION_RATIO) -> dict:
    """Compressed RLE of the boundary region of a mask given as a compressed RLE (pycocotools' form)."""
    h, w = (int(v) for v in segmentation["size"])
    mask = mask_util.decode(segmentation).astype(bool)
    return _encode(mask_boundary(mask, dilation_pixels(h, w, dilation_ratio)))


def boundary_iou(a: np.ndarray, b: np.ndarray, dilation_ratio: float = DILATION_RATIO) -> float:
    """Boundary IoU of two bool (H, W) masks of one image (0.0 when both boundaries are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (H, W) masks of one shape, got {a.shape} and {b.shape}")
    d = dilation_pixels(a.shape[0], a.shape[1], dilation_ratio)
    ba, bb = mask_boundary(a, d), mask_boundary(b, d)
    union = int(np.count_nonzero(ba | bb))
    return float(np.count_nonzero(ba & bb)) / union if union else 0.0


class BoundaryCOCOeval(COCOeval):
    """pycocotools' `COCOeval` (iouType "segm") with the matching IoU min(mask IoU, boundary IoU) for non-crowd GT.

    Boundaries are computed once per annotation (cached by ground truth / detection id), at the image size of the
    annotation's RLE. `params.iouType` stays "segm", so everything but `computeIoU` is pycocotools' own code.
    """

    def __init__(self, coco_gt: COCO, coco_dt: COCO, dilation_ratio: float = DILATION_RATIO):
        super().__init__(coco_gt, coco_dt, iouType="segm")
        self.dilation_ratio = float(dilation_ratio)
        self._boundaries: dict[tuple[str, int], dict] = {}

    def _boundary(self, kind: str, ann: dict) -> dict:
        key = (kind, int(ann["id"]))
        rle = self._boundaries.get(key)
        if rle is None:  # `_prepare` has turned every segmentation into a compressed RLE by now
            rle = self._boundaries[key] = boundary_rle(ann["segmentation"], self.dilation_ratio)
        return rle

    def computeIoU(self, imgId: int, catId: int) -> Any:  # pycocotools names it
        mask_ious = super().computeIoU(imgId, catId)
        p = self.params
        if p.useCats:
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if not len(gt) or not len(dt):
            return mask_ious
        # the detection order and cut of pycocotools' computeIoU (its rows)
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: p.maxDets[-1]]
        crowd = np.array([int(g["iscrowd"]) for g in gt], dtype=bool)
        ious = np.array(mask_ious, dtype=np.float64).reshape(len(dt), len(gt))
        if (~crowd).any():
            gt_b = [self._boundary("gt", g) for g, c in zip(gt, crowd, strict=True) if not c]
            dt_b = [self._boundary("dt", d) for d in dt]
            b_ious = np.array(mask_util.iou(dt_b, gt_b, [0] * len(gt_b)), dtype=np.float64)
            ious[:, ~crowd] = np.minimum(ious[:, ~crowd], b_ious.reshape(len(dt), len(gt_b)))
        return ious


def boundary_metrics(
    coco_gt: COCO,
    coco_dt: COCO,
    image_ids: list[int] | None = None,
    verbose: bool = True,
    dilation_ratio: float = DILATION_RATIO,
    category_ids: list[int] | None = None,
) -> dict:
    """Boundary AP of loaded detections against a ground-truth index: the same keys as mask AP (`AP`, `AP50`, ...,
    `per_class`, `pr_curves`; percent, NaN where pycocotools says -1), over `category_ids` (default all).
    `verbose` prints the 12-line table."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = BoundaryCOCOeval(coco_gt, coco_dt, dilation_ratio=dilation_ratio)
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        if category_ids is not None:
            ev.params.catIds = sorted(category_ids)
        ev.evaluate()
        ev.accumulate()
    if verbose:
        say(f"Boundary AP (dilation ratio {dilation_ratio:g}):", stdout=True)
        ev.summarize()
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            ev.summarize()
    metrics = summary_metrics(ev, coco_gt)
    metrics["dilation_ratio"] = float(dilation_ratio)
    return metrics
