"""Cityscapes' own instance-level metric (the AP and AP50% of cityscapesscripts' `evalInstanceLevelSemanticLabeling`)
from COCO-format predictions and the `*_gtFine_instanceIds.png` ground truth.

The rules (those of the Cityscapes benchmark, without its distance-based variants):

* classes: the eight instance classes (person, rider, car, truck, bus, train, motorcycle, bicycle); a prediction of
  another class is skipped, as is an empty one. Overlaps 0.50:0.95 in steps of 0.05 (`numpy.arange(0.5, 1, 0.05)`);
  a match needs IoU strictly above the overlap.
* ground truth: a pixel value `labelId * 1000 + k` is instance `k`. Only instances (value >= 1000) of at least 100
  pixels count. A bare `labelId` (a group region without instance number) and smaller instances are ignore regions.
  Void pixels are those whose value is the id of a label the benchmark ignores (0-6, 9, 10, 14-16, 18, 29, 30:
  unlabeled, ego vehicle, ..., caravan and trailer groups).
* per ground-truth instance: every prediction of its class with IoU above the overlap matches it; the best-scored one
  is a true positive, the others false positives; without one it is a false negative.
* a prediction that matches no ground truth (nor any group or small instance) above the overlap is a false positive,
  unless the share of its pixels on void, group regions and small instances (a small group counted twice, as the
  reference does) exceeds the overlap, in which case it is ignored.
* per class and overlap, precision/recall at every distinct score (ascending), a final (recall 0, precision 1)
  point, and the area under the curve with the reference's step widths `(r[i-1] - r[i+1]) / 2`. A class without
  ground truth is NaN; a class with ground truth but no prediction is 0 (as is one whose predictions were all
  ignored, where the reference stops with an error).
* AP: the mean over classes and overlaps, NaN ignored; AP50: the same at overlap 0.5. Reported in percent.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.cityscapes import CITYSCAPES_THINGS
from ..errors import DatasetError
from ..log import say

OVERLAPS = np.arange(0.5, 1.0, 0.05)  # the reference's own floats (0.6000000000000001, ...): matches use ">"
MIN_REGION_SIZE = 100
# label ids the benchmark ignores (`ignoreInEval` in cityscapesscripts' label table; license plate's -1 never occurs)
VOID_LABEL_IDS = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)


@dataclass
class _Gt:
    inst_id: int
    pixels: int
    matches: list[tuple[int, int, float]] = field(default_factory=list)  # (intersection, prediction pixels, score)


@dataclass
class _Pred:
    pixels: int
    score: float
    void: int  # pixels on void
    matches: list[tuple[int, int, int]] = field(default_factory=list)  # (gt instance id, gt pixels, intersection)


def gt_file(root: str | os.PathLike, image_file: str) -> Path:
    """The `gtFine/.../*_gtFine_instanceIds.png` of a `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png` path
    (absolute or relative to the dataset root `root`)."""
    img = Path(image_file)
    if not img.name.endswith("_leftImg8bit.png") or len(img.parts) < 3:
        raise DatasetError(f"{image_file}: not a Cityscapes leftImg8bit/<split>/<city>/*_leftImg8bit.png image")
    stem = img.name.removesuffix("_leftImg8bit.png")
    split, city = img.parts[-3], img.parts[-2]
    return Path(root) / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png"


def is_cityscapes(dataset: Any) -> bool:
    """Whether a loaded dataset is a Cityscapes layout (its instance PNGs are there to score against)."""
    return str(getattr(dataset, "name", "")).startswith("cityscapes_") and (Path(dataset.root) / "gtFine").is_dir()


def read_instance_ids(path: Path) -> np.ndarray:
    """An `*_instanceIds.png` as an int64 (H, W) array, or `DatasetError` naming the file."""
    from PIL import Image

    from ..data.images import PIL_ERRORS

    try:
        with Image.open(path) as im:
            ids = np.asarray(im).astype(np.int64)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing Cityscapes instance ids PNG") from None
    except PIL_ERRORS as e:
        raise DatasetError(f"{path}: cannot read instance ids PNG ({e})") from None
    if ids.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel id map, got shape {ids.shape}")
    return ids


class CityscapesInstanceEval:
    """Add images with `add_image(ids, masks, label_ids, scores)`, then `evaluate()`."""

    def __init__(self, min_region_size: int = MIN_REGION_SIZE):
        self.min_region_size = int(min_region_size)
        self.labels = list(CITYSCAPES_THINGS)  # label ids in the reference's class order
        # per class: one entry per image of (ground-truth instances and groups, predictions)
        self._gts: dict[int, list[list[_Gt]]] = {c: [] for c in self.labels}
        self._preds: dict[int, list[list[_Pred]]] = {c: [] for c in self.labels}

    def add_image(self, ids: np.ndarray, masks: Any, label_ids: Any, scores: Any) -> None:
        """One image: its instance id map (H, W) and its predictions, bool masks (K, H, W) (or a sequence of them),
        Cityscapes label ids (K,) and scores (K,)."""
        ids = np.asarray(ids)
        values, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(ids.shape)
        void = np.isin(ids, VOID_LABEL_IDS)
        owner = np.where(values >= 1000, values // 1000, values)  # label id of every value
        gts = {
            c: [_Gt(int(v), int(n)) for v, n, o in zip(values, counts, owner, strict=True) if o == c]
            for c in self.labels
        }
        preds: dict[int, list[_Pred]] = {c: [] for c in self.labels}
        for mask, label, score in zip(
            masks, np.asarray(label_ids).reshape(-1), np.asarray(scores).reshape(-1), strict=True
        ):
            label = int(label)
            if label not in preds:
                continue
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != ids.shape:
                raise ValueError(f"a prediction mask is {mask.shape}, the ground truth {ids.shape}")
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if not len(rows):
                continue
            box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # counting inside the mask's box suffices
            inside = mask[box]
            pixels = int(np.count_nonzero(inside))
            pred = _Pred(pixels, float(score), int(np.count_nonzero(void[box] & inside)))
            overlap = np.bincount(inverse[box][inside], minlength=len(values))
            for gt in gts[label]:
                inter = int(overlap[np.searchsorted(values, gt.inst_id)])
                if inter:
                    gt.matches.append((inter, pixels, pred.score))
                    pred.matches.append((gt.inst_id, gt.pixels, inter))
            preds[label].append(pred)
        for c in self.labels:
            self._gts[c].append(gts[c])
            self._preds[c].append(preds[c])

    def _counts(self, label: int, overlap: float) -> tuple[list[tuple[bool, float]], int, bool, bool]:
        """-> ((is true, score) examples, hard false negatives, any counted GT, any prediction) for a class."""
        examples: list[tuple[bool, float]] = []
        missed = 0
        have_gt = have_pred = False
        small = self.min_region_size
        for gts, preds in zip(self._gts[label], self._preds[label], strict=True):
            counted = [g for g in gts if g.inst_id >= 1000 and g.pixels >= small]
            have_gt |= bool(counted)
            have_pred |= bool(preds)
            for g in counted:
                hits = sorted(s for inter, pp, s in g.matches if inter / (g.pixels + pp - inter) > overlap)
                if not hits:
                    missed += 1
                    continue
                examples.append((True, hits[-1]))
                examples += [(False, s) for s in hits[:-1]]
            for p in preds:
                if any(inter / (gp + p.pixels - inter) > overlap for _, gp, inter in p.matches):
                    continue
                ignored = p.void
                ignored += sum(inter for gid, _, inter in p.matches if gid < 1000)
                ignored += sum(inter for _, gp, inter in p.matches if gp < small)
                if ignored / p.pixels <= overlap:
                    examples.append((False, p.score))
        return examples, missed, have_gt, have_pred

    @staticmethod
    def _average_precision(examples: list[tuple[bool, float]], missed: int) -> float:
        if not examples:
            return 0.0
        scores = np.array([s for _, s in examples], dtype=np.float64)
        true = np.array([t for t, _ in examples], dtype=np.float64)
        order = np.argsort(scores, kind="stable")
        scores, true = scores[order], true[order]
        _, first = np.unique(scores, return_index=True)  # ascending distinct scores, where each starts
        below = np.concatenate([[0.0], np.cumsum(true)])[first]  # trues scored under each threshold
        tp = true.sum() - below
        fp = (len(scores) - first) - tp
        precision = list(tp / (tp + fp))
        recall = list(tp / (tp + below + missed))
        precision.append(1.0)
        recall.append(0.0)
        r = np.array(recall)
        before = np.concatenate([r[:1], r[:-1]])
        after = np.concatenate([r[1:], [0.0]])
        return float(np.dot(np.array(precision), (before - after) / 2))

    def ap_matrix(self) -> np.ndarray:
        """(classes, overlaps) AP as fractions; NaN for a class without counted ground truth."""
        out = np.full((len(self.labels), len(OVERLAPS)), np.nan)
        for i, label in enumerate(self.labels):
            for j, t in enumerate(OVERLAPS):
                examples, missed, have_gt, have_pred = self._counts(label, float(t))
                if have_gt:
                    out[i, j] = self._average_precision(examples, missed) if have_pred else 0.0
        return out

    def evaluate(self) -> dict:
        """{"AP", "AP50" (percent, NaN-ignoring means over classes), "per_class": {name: AP}, "per_class_AP50",
        "min_region_size", "images"}."""
        aps = self.ap_matrix()
        o50 = int(np.argmin(np.abs(OVERLAPS - 0.5)))

        def mean(a: np.ndarray) -> float:
            a = a[~np.isnan(a)]
            return float(a.mean() * 100) if a.size else float("nan")

        names = [CITYSCAPES_THINGS[c] for c in self.labels]
        return {
            "AP": mean(aps.reshape(-1)),
            "AP50": mean(aps[:, o50]),
            "per_class": {n: float(np.mean(aps[i]) * 100) for i, n in enumerate(names)},
            "per_class_AP50": {n: float(aps[i, o50] * 100) for i, n in enumerate(names)},
            "min_region_size": self.min_region_size,
            "images": len(self._gts[self.labels[0]]),
        }


def evaluate_cityscapes(
    results: list[dict] | str | os.PathLike,
    dataset: Any,
    image_ids: list[int] | None = None,
    verbose: bool = True,
) -> dict:
    """Cityscapes AP / AP50 of COCO segm results (a list or a results json; `category_id` = Cityscapes label id, as
    `load_cityscapes` numbers them) on a Cityscapes split loaded by `fastinst.data.registry.load_dataset`. Image
    identity is `results_file.match_image_ids`' (entries with a `file_name` are matched by it), as for COCO AP.

    Every image of the split is scored (or those of `image_ids`), with its `*_gtFine_instanceIds.png`; an image
    without predictions contributes its ground truth as misses. `verbose` says a per-class table on stdout.
    """
    from pycocotools import mask as mask_util

    from .evaluator import coco_api
    from .results_file import load_results, match_image_ids

    dets, label = load_results(results)
    # quiet: its note was said when the COCO metrics were computed
    dets = match_image_ids(dets, coco_api(dataset.coco), label, getattr(dataset, "image_root", None), quiet=True)
    images = {int(im["id"]): im for im in dataset.coco["images"]}
    wanted = sorted(images) if image_ids is None else sorted({int(i) for i in image_ids})
    unknown = [i for i in wanted if i not in images]
    if unknown:
        raise DatasetError(f"{label}: image id(s) {unknown[:5]} are not in {getattr(dataset, 'name', 'the dataset')}")
    by_image: dict[int, list[dict]] = {i: [] for i in wanted}
    for r in dets:
        if int(r["image_id"]) in by_image:
            by_image[int(r["image_id"])].append(r)
    ev = CityscapesInstanceEval()
    for image_id in wanted:
        path = gt_file(dataset.root, images[image_id]["file_name"])
        ids = read_instance_ids(path)
        rles = []
        for r in by_image[image_id]:
            seg = r["segmentation"]
            if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
                raise DatasetError(f"{label}: image {image_id}: Cityscapes scoring needs RLE segmentations")
            if tuple(int(v) for v in seg["size"]) != ids.shape:
                raise DatasetError(
                    f"{label}: image {image_id}: a mask is {seg['size'][0]}x{seg['size'][1]} but {path.name} is "
                    f"{ids.shape[0]}x{ids.shape[1]}"
                )
            counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
            rles.append({"size": seg["size"], "counts": counts})
        masks = (mask_util.decode(rle).astype(bool) for rle in rles)
        ev.add_image(
            ids, masks, [r["category_id"] for r in by_image[image_id]], [r["score"] for r in by_image[image_id]]
        )
    metrics = ev.evaluate()
    if verbose:
        say(f"Cityscapes instance metric ({metrics['images']} images): class AP / AP50", stdout=True)
        for name in metrics["per_class"]:
            ap, ap50 = metrics["per_class"][name], metrics["per_class_AP50"][name]
            say(f"  {name:<12} {_fmt(ap)} {_fmt(ap50)}", stdout=True)
        say(f"  {'average':<12} {_fmt(metrics['AP'])} {_fmt(metrics['AP50'])}", stdout=True)
    return metrics


def _fmt(v: float) -> str:
    return f"{v:6.2f}" if math.isfinite(v) else "   n/a"
