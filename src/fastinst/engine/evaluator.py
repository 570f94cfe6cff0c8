"""COCO mask AP with pycocotools' own `COCOeval` (segm, standard parameters, maxDets 1/10/100).

`COCOEvaluator` turns per-image predictions (bool masks, scores, contiguous labels) into COCO results (compressed RLE
of the Fortran-ordered uint8 mask, `category_id` mapped back to the dataset's ids, `bbox` = the mask's box as XYWH),
gathers them across DDP ranks and scores them. Metrics are in percent; a metric pycocotools reports as -1 (no ground
truth in that area range) is NaN. `write_report` saves `metrics.json` and precision/recall curves. A results json
is read and checked by `fastinst.engine.results_file`; `fastinst eval` as one call is `engine.evaluation`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..errors import DatasetError, note
from ..files import atomic_path
from .coco_metrics import summary_metrics
from .results_file import load_results, match_image_ids


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def coco_api(coco_gt: dict | str | os.PathLike | COCO) -> COCO:
    """A pycocotools `COCO` index for a GT dict, a json path or an existing `COCO` (without its prints)."""
    if isinstance(coco_gt, COCO):
        return coco_gt
    if not isinstance(coco_gt, dict):
        from ..data.jsonfiles import read_json

        coco_gt = read_json(Path(coco_gt))
    if not isinstance(coco_gt, dict) or "images" not in coco_gt or "categories" not in coco_gt:
        raise DatasetError("ground truth is not a COCO instances dict (needs 'images' and 'categories')")
    api = COCO()
    api.dataset = {**coco_gt, "annotations": coco_gt.get("annotations") or []}
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


class COCOEvaluator:
    """Collect predictions with `process`, optionally `gather` them over ranks, then `evaluate` on rank 0."""

    def __init__(self, coco_gt: dict | str | os.PathLike | COCO, category_ids: list[int | None] | None = None):
        """`category_ids`: the GT category id of each contiguous label (None: a class the GT lacks, whose predictions
        are left out; `fastinst.classes.match_classes`); default the GT's ids in order."""
        self.coco = coco_api(coco_gt)
        gt_cats: list[int | None] = list(sorted(self.coco.cats))
        self.category_ids = list(category_ids) if category_ids is not None else gt_cats
        unknown = [c for c in self.category_ids if c is not None and c not in self.coco.cats]
        if unknown:
            raise DatasetError(f"category ids {unknown[:5]} are not in the ground truth's categories")
        self.results: list[dict] = []
        self.image_ids: list[int] = []

    def reset(self) -> None:
        self.results, self.image_ids = [], []

    def process(self, image_id: int, masks: Any, scores: Any, labels: Any) -> None:
        """One image's predictions: masks bool (K, H, W) at the original size, scores (K,), contiguous labels (K,)."""
        image_id = int(image_id)
        info = self.coco.imgs.get(image_id)
        if info is None:
            raise DatasetError(f"image id {image_id} is not in the ground truth")
        masks, scores, labels = _as_numpy(masks), _as_numpy(scores).reshape(-1), _as_numpy(labels).reshape(-1)
        if masks.ndim != 3 or not len(masks) == len(scores) == len(labels):
            raise ValueError(
                f"image {image_id}: expected masks (K, H, W), scores (K,), labels (K,); got "
                f"{masks.shape}, {scores.shape}, {labels.shape}"
            )
        size = (info.get("height"), info.get("width"))
        if len(masks) and None not in size and masks.shape[1:] != size:
            raise ValueError(
                f"image {image_id}: masks are {masks.shape[1]}x{masks.shape[2]} but the image is "
                f"{size[0]}x{size[1]} (predictions must be at the original size)"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.category_ids)):
            raise ValueError(f"image {image_id}: labels outside 0..{len(self.category_ids) - 1}")
        self.image_ids.append(image_id)
        if not len(masks):
            return
        from ..data.masks import masks_to_rles

        rles = masks_to_rles(masks)
        boxes = mask_util.toBbox([dict(r, counts=r["counts"].encode("ascii")) for r in rles])
        for rle, box, score, label in zip(rles, boxes, scores, labels, strict=True):
            category_id = self.category_ids[int(label)]
            if category_id is None:  # a class the ground truth does not have
                continue
            self.results.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": rle,
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )

    def gather(self) -> None:
        """Under torch.distributed: every rank ends up with all ranks' results (all_gather_object)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        boxes: list = [None] * dist.get_world_size()
        dist.all_gather_object(boxes, (self.results, self.image_ids))
        self.results = [r for res, _ in boxes for r in res]
        self.image_ids = [i for _, ids in boxes for i in ids]

    def evaluate(self, image_ids: list[int] | None = None, verbose: bool = True) -> dict:
        """COCO segm metrics over `image_ids` (default: the processed images, or all when none was processed) and the
        categories some label maps to."""
        ids = image_ids if image_ids is not None else (sorted(set(self.image_ids)) or None)
        cats = sorted({c for c in self.category_ids if c is not None})
        return evaluate_results(self.results, self.coco, image_ids=ids, verbose=verbose, category_ids=cats)


def predict_dataset(
    model: Any,
    dataset: Any,
    max_images: int | None = None,
    progress: bool = False,
    visit: Any = None,
    num_workers: int = 0,
    category_ids: list[int | None] | None = None,
) -> COCOEvaluator:
    """Run `model.detect` over a dataset split (this rank's share under torch.distributed) into a `COCOEvaluator`
    that holds every rank's results. `visit(n, record, image, instances)` sees each image (e.g. to draw overlays).

    Evaluation keeps the official 100 detections with no score threshold (what COCO mask AP is computed on).
    `category_ids`: the dataset id of each model class (default `fastinst.classes.match_model`). Images are
    decoded in `num_workers` processes (`fastinst.data.loader.build_test_loader`).
    """
    from tqdm import tqdm

    from ..classes import match_model
    from ..data.loader import build_test_loader
    from . import distributed as dist_utils

    records = dataset.records[:max_images] if max_images else dataset.records
    ids = category_ids if category_ids is not None else match_model(model, dataset).ids
    evaluator = COCOEvaluator(dataset.coco, ids)
    mine = records[dist_utils.rank() :: dist_utils.world_size()]
    loader = build_test_loader(mine, num_workers=num_workers)  # (record, (H, W, 3) uint8 RGB) in order
    bar = tqdm(loader, total=len(mine), desc="eval", unit="img", disable=not progress or not dist_utils.is_main())
    for n, (rec, image) in enumerate(bar):
        out = model.detect([image], score_threshold=0.0, max_detections=100)[0]
        evaluator.process(rec["image_id"], out["masks"], out["scores"], out["labels"])
        if visit is not None:
            visit(n, rec, image, out)
    evaluator.gather()
    return evaluator


def evaluate_results(
    results: list[dict] | str | os.PathLike,
    coco_gt: dict | str | os.PathLike | COCO,
    image_ids: list[int] | None = None,
    verbose: bool = True,
    boundary: bool = False,
    image_root: str | os.PathLike | None = None,
    category_ids: list[int] | None = None,
    classes: list[dict] | None = None,
) -> dict:
    """Score COCO segm results (a list or a results json) against a GT dict/json; prints the 12-line table.

    `boundary`: also boundary AP (`fastinst.engine.boundary`) on the same detections, as the `"boundary"` block.
    Image identity: `match_image_ids` (entries with a `file_name` are matched to the GT images by it; `image_root`,
    where the GT's file names are, lets absolute paths match too). Classes: `category_ids` limits the score to those
    GT categories (the ones the model knows); else entries that carry `category_name` (`fastinst predict
    --save-json` writes it) are matched to the GT's categories by name (`match_result_classes`, with `classes`, the
    model's own class list, when known)."""
    gt = coco_api(coco_gt)
    dets, label = load_results(results)
    dets = match_image_ids(dets, gt, label, image_root)  # file_name -> the GT's image id; unknown ids refused
    if category_ids is None:
        dets, category_ids = match_result_classes(dets, gt, label, classes)
    unknown_cats = sorted({r["category_id"] for r in dets} - set(gt.cats), key=str)
    if unknown_cats:
        raise DatasetError(f"{label}: category id(s) {unknown_cats[:5]} not in the ground truth")
    warn_crowded_images(gt.dataset, image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        if dets:
            dt = gt.loadRes([dict(r) for r in dets])  # loadRes writes ids/areas into the entries: copies
        else:  # pycocotools cannot load an empty list: an empty result set scores 0 (or -1 without GT)
            dt = coco_api({"images": gt.dataset["images"], "categories": gt.dataset["categories"]})
        ev = COCOeval(gt, dt, iouType="segm")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        if category_ids is not None:
            ev.params.catIds = sorted(category_ids)
        ev.evaluate()
        ev.accumulate()
    if verbose:
        ev.summarize()
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            ev.summarize()
    metrics = summary_metrics(ev, gt)
    if boundary:
        from .boundary import boundary_metrics

        metrics["boundary"] = boundary_metrics(
            gt, dt, image_ids=image_ids, verbose=verbose, category_ids=ev.params.catIds
        )
    return metrics


def match_result_classes(
    dets: list[dict], gt: COCO, label: str = "results", classes: list[dict] | None = None
) -> tuple[list[dict], list[int] | None]:
    """Results entries with the GT's category ids, matched by name (`fastinst.classes`), and the GT categories
    to score (None: all).

    Only entries that carry a `category_name` are matched by it; the model's classes are `classes` ({id, name}
    entries, from the run's side file) when given, else the (id, name) pairs the entries carry. Entries of classes
    the GT lacks are dropped with a note; GT categories the model lacks are left out of the score only when
    `classes` says what the model knows (a class the model never predicted still counts otherwise)."""
    from ..classes import has_names, match_classes

    pairs: dict[int, str] = {}
    for c in classes or []:
        pairs.setdefault(int(c["id"]), str(c["name"]))
    for r in dets:
        name = r.get("category_name")
        if isinstance(name, str) and name and isinstance(r.get("category_id"), int):
            pairs.setdefault(int(r["category_id"]), name)
    gt_ids = sorted(gt.cats)
    gt_names = [str(gt.cats[c].get("name", c)) for c in gt_ids]
    if not pairs or not has_names(list(pairs.values())) or not has_names(gt_names, gt_ids):
        return dets, None
    model_ids = sorted(pairs)
    match = match_classes([pairs[c] for c in model_ids], model_ids, gt_names, gt_ids, data_label=label)
    for line in match.notes("the ground truth", model_label=label):
        note(line)
    to_gt = dict(zip(model_ids, match.ids, strict=True))
    out = []
    for r in dets:
        if isinstance(r.get("category_name"), str) and r["category_name"] and r.get("category_id") in to_gt:
            new = to_gt[r["category_id"]]
            if new is None:
                continue
            r = dict(r, category_id=new)
        out.append(r)
    return out, (match.shared if classes else None)


def warn_crowded_images(coco: dict, image_ids: list[int] | None = None, limit: int = 100, why: str = "") -> None:
    """A warning when images of the COCO dict `coco` hold more (non-crowd) ground-truth instances than `limit`
    detections can cover (`why`; default COCO AP's 100 detections per image): even perfect predictions score below
    100 AP there."""
    images = {im["id"]: im for im in coco.get("images") or []}
    ids = set(images) if image_ids is None else set(image_ids)
    counts: dict[int, int] = {}
    for a in coco.get("annotations") or []:
        if not a.get("iscrowd") and a.get("image_id") in ids:
            counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
    over = {i: n for i, n in counts.items() if n > limit}
    if not over:
        return
    worst = max(over, key=lambda i: over[i])
    name = images.get(worst, {}).get("file_name", worst)
    note(
        f"{len(over)} image(s) have more ground-truth instances than {why or f'the {limit} detections COCO AP counts'}"
        f" (most: {over[worst]} in {name}); their instances beyond {limit} cannot be found, so AP stays below 100",
        level="warning",
    )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_report(metrics: dict, out_dir: str | os.PathLike) -> Path:
    """`metrics.json` (NaN as null) and `pr_curve_iou50.png` / `pr_curve_iou75.png` in `out_dir`; -> metrics path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "metrics.json"
    _atomic_write(target, lambda p: p.write_text(json.dumps(_jsonable(metrics), indent=2) + "\n", encoding="utf-8"))
    # the curves need the `plots` extra; without it the metrics are written and the CLI names the extra.
    # A Figure with its own Agg canvas, not pyplot: the user's backend and open figures are left as they are.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for key, label in (("iou50", "0.50"), ("iou75", "0.75")):
        curve = metrics.get("pr_curves", {}).get(key)
        if not curve:
            continue
        fig = Figure(figsize=(5, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.plot(curve["recall"], curve["precision"])
        ap = metrics.get("AP50" if key == "iou50" else "AP75", float("nan"))
        ax.set(
            xlabel="recall",
            ylabel="precision",
            xlim=(0, 1),
            ylim=(0, 1.02),
            title=f"mask precision/recall, IoU {label} (AP {ap:.1f})",
        )
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _atomic_write(out / f"pr_curve_{key}.png", partial(fig.savefig, format="png"))
    return target
