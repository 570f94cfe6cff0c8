"""COCO mask AP with pycocotools' own `COCOeval` (segm, standard parameters, maxDets 1/10/100).

`COCOEvaluator` turns per-image predictions (bool masks, scores, contiguous labels) into COCO results (compressed RLE
of the Fortran-ordered uint8 mask, `category_id` mapped back to the dataset's ids, `bbox` = the mask's box as XYWH),
gathers them across DDP ranks and scores them. Metrics are in percent; a metric pycocotools reports as -1 (no ground
truth in that area range) is NaN. `write_report` saves `metrics.json` and precision/recall curves.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..errors import DatasetError, note
from ..files import atomic_path
from .coco_metrics import summary_metrics


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def coco_api(coco_gt: dict | str | os.PathLike | COCO) -> COCO:
    """A pycocotools `COCO` index for a GT dict, a json path or an existing `COCO` (without its prints)."""
    if isinstance(coco_gt, COCO):
        return coco_gt
    if not isinstance(coco_gt, dict):
        from ..data.datasets import read_json

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
        from ..data.datasets import masks_to_rles

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


class _FileResults(list):
    """The entries of a results file, each checked by `_check_entry`; `match_image_ids` also checks their masks
    against the ground truth (`_checked_masks`) once their image ids are the ground truth's."""


def _load_results(results: list[dict] | str | os.PathLike) -> tuple[list[dict], str]:
    """The entries of a results list or json file, and the label naming it in messages. Every entry of a file is
    checked (`_check_entry`): `image_id` and `category_id` integers, `score` a finite number, `segmentation` an RLE
    dict; a list built in memory (by `COCOEvaluator`) only needs the four keys."""
    from_file = False
    if isinstance(results, (str, os.PathLike)):
        from ..data.datasets import read_json

        data, label, from_file = read_json(Path(results)), str(results), True
    else:
        data, label = results, "results"
    if not isinstance(data, list):
        raise DatasetError(f"{label}: expected a list of COCO result objects")
    for n, r in enumerate(data):
        if not isinstance(r, dict) or not {"image_id", "category_id", "segmentation", "score"} <= r.keys():
            raise DatasetError(f"{label}: entry {n} needs image_id, category_id, segmentation and score")
        if from_file:
            _check_entry(r, f"{label}: entry {n}")
    return (_FileResults(data) if from_file else data), label


def _check_entry(r: dict, where: str) -> None:
    """One results entry's types, before anything reads it (`DatasetError` naming `where`)."""
    from ..data.datasets import _shown, is_int, is_number

    for key in ("image_id", "category_id"):
        if not is_int(r[key]):
            raise DatasetError(f"{where}: '{key}' must be an integer, got {_shown(r[key])}")
    if not is_number(r["score"]):
        raise DatasetError(f"{where}: 'score' must be a finite number, got {_shown(r['score'])}")
    for key in ("file_name", "category_name"):
        if r.get(key) is not None and not isinstance(r[key], str):
            raise DatasetError(f"{where}: '{key}' must be a string, got {_shown(r[key])}")
    box = r.get("bbox")
    if box not in (None, []) and not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
        raise DatasetError(f"{where}: 'bbox' must be 4 numbers [x, y, width, height], got {_shown(box)}")
    seg = r["segmentation"]
    if isinstance(seg, list) and seg and all(isinstance(part, list) for part in seg):
        return  # polygons: checked and made RLE at their image's size by `_checked_masks`
    size = seg.get("size") if isinstance(seg, dict) else None
    counts = seg.get("counts") if isinstance(seg, dict) else None
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(is_int(v) and v > 0 for v in size)
        and (isinstance(counts, str) or (isinstance(counts, list) and all(is_int(c) for c in counts)))
    ):
        raise DatasetError(
            f"{where}: 'segmentation' must be an RLE {{'size': [height, width], 'counts': ...}} or polygons (lists "
            f"of x, y coordinates), got {_shown(seg)}"
        )


def _checked_masks(dets: list[dict], gt: COCO, label: str) -> list[dict]:
    """Results entries (image ids already the ground truth's) whose RLE has its image's size and run lengths that
    cover exactly its pixels, with list `counts` compressed and polygons (clipped to the image, as ground truth
    polygons are) made compressed RLE: what pycocotools' `loadRes` reads; else a `DatasetError` naming the entry.
    Nothing is decoded before this passed: pycocotools' decoder trusts the runs."""
    from collections import Counter

    from ..data.datasets import _clean_segmentation, check_rle_strings, json_rle

    out: list[dict] = []
    strings: list[tuple[str, str, int, int]] = []
    for n, r in enumerate(dets):
        seg, image = r["segmentation"], gt.imgs[r["image_id"]]
        h, w = int(image["height"]), int(image["width"])
        where = f"{label}: entry {n} (image id {r['image_id']})"
        if isinstance(seg, list):
            parts = _clean_segmentation(seg, h, w, where, Counter())
            if not parts:
                raise DatasetError(f"{where}: no polygon with 3 points or more (an even number of coordinates)")
            out.append(dict(r, segmentation=json_rle(parts, h, w)))
            continue
        if seg["size"] != [h, w]:
            raise DatasetError(f"{where}: RLE size {seg['size']} does not match its image ({h}x{w})")
        counts = seg["counts"]
        if isinstance(counts, list):
            if any(c < 0 for c in counts) or sum(counts) != h * w:
                raise DatasetError(f"{where}: RLE run lengths must be non-negative and add up to {h}x{w} pixels")
            rle = mask_util.frPyObjects({"size": [h, w], "counts": counts}, h, w)
            counts = rle["counts"].decode("ascii")
            r = dict(r, segmentation={"size": [h, w], "counts": counts})
        else:
            strings.append((where, counts, h, w))
        out.append(r)
    if strings:
        check_rle_strings(strings)
    if any(r.get("bbox") for r in out):
        # pycocotools' loadRes reads every entry as the first: one with a box makes it read every entry's box
        for k, r in enumerate(out):
            if not r.get("bbox"):
                seg = r["segmentation"]
                box = mask_util.toBbox({"size": seg["size"], "counts": seg["counts"].encode("ascii")})
                out[k] = dict(r, bbox=[float(v) for v in box])
    return out


class ImageIndex:
    """A dataset's images by file name: the one rule by which `fastinst predict --data` gives predictions the
    dataset's image ids and `fastinst eval --results` checks them.

    A path names the image whose file it is (`image_root / file_name`, compared as absolute normalised paths);
    else the image whose `file_name` (relative to the image root) is the longest trailing part of the path, when that
    part has two or more components (`val2017/a.jpg` in `/elsewhere/val2017/a.jpg`); else the image with the same
    base name when exactly one image has it. `find` -> the image id, or None. `max_id`: the largest image id.
    """

    def __init__(self, images: list[dict], image_root: str | os.PathLike | None = None):
        self.by_parts: dict[tuple[str, ...], int] = {}
        self.by_path: dict[str, int] = {}
        bases: dict[str, list[int]] = {}
        for im in images:
            image_id, name = int(im["id"]), str(im["file_name"])
            parts = _name_parts(name)
            self.by_parts.setdefault(parts, image_id)
            bases.setdefault(parts[-1] if parts else "", []).append(image_id)
            if image_root is not None:
                self.by_path.setdefault(_abs_name(Path(image_root) / name), image_id)
        self.by_base = {base: ids[0] for base, ids in bases.items() if len(ids) == 1 and base}
        self.max_id = max((int(im["id"]) for im in images), default=0)
        self._found: dict[str, int | None] = {}

    def find(self, path: str | os.PathLike) -> int | None:
        key = str(path)
        if key not in self._found:
            self._found[key] = self._find(key)
        return self._found[key]

    def _find(self, path: str) -> int | None:
        if self.by_path and path:
            hit = self.by_path.get(_abs_name(Path(path)))
            if hit is not None:
                return hit
        parts = _name_parts(path)
        for start in range(len(parts) - 1):  # longest trailing part first, two components at least
            hit = self.by_parts.get(parts[start:])
            if hit is not None:
                return hit
        return self.by_base.get(parts[-1]) if parts else None


def _name_parts(name: str) -> tuple[str, ...]:
    """`a/./b\\c.jpg` -> ("a", "b", "c.jpg"): a file name's components, whichever separator it was written with."""
    return tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", "."))


def _abs_name(path: Path) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(path)))


def match_image_ids(
    dets: list[dict], gt: COCO, label: str = "results", image_root: str | os.PathLike | None = None
) -> list[dict]:
    """Results entries with the ground truth's image ids, or a one-line `DatasetError`; never a silent mismatch.

    Entries that carry a `file_name` (what `fastinst predict --save-json` writes) are matched to the GT images by it
    (`ImageIndex`) and get that image's id, whatever `image_id` they had (one note on stderr says how many changed);
    a file name that matches no image is refused. Entries without one must already use GT image ids. The entries of
    a results file (`_load_results`) also have their masks checked against their images (`_checked_masks`).
    """
    from_file = isinstance(dets, _FileResults)
    named = [r for r in dets if _has_file_name(r)]
    if named:
        index = ImageIndex(gt.dataset.get("images") or [], image_root)
        ids = {name: index.find(name) for name in dict.fromkeys(r["file_name"] for r in named)}
        missing = [name for name, image_id in ids.items() if image_id is None]
        if missing:
            raise DatasetError(
                f"{label}: {len(missing)} file name(s) match no ground-truth image, e.g. {missing[0]!r} "
                "(matched by path under the image root, then by unique base name)"
            )
        first: dict[int | None, str] = {}
        for name, image_id in ids.items():
            other = first.setdefault(image_id, name)
            if other != name:
                raise DatasetError(
                    f"{label}: file names {other!r} and {name!r} both match ground-truth image {image_id}; "
                    "predict each image once"
                )
        changed = sum(ids[r["file_name"]] != r["image_id"] for r in named)
        if changed:
            note(
                f"matched {len(named)} predictions to ground-truth images by file_name ({changed} had another image_id)"
            )
            dets = [dict(r, image_id=ids[r["file_name"]]) if _has_file_name(r) else r for r in dets]
    unknown_images = sorted({r["image_id"] for r in dets if not _has_file_name(r)} - set(gt.imgs), key=str)
    if unknown_images:
        raise DatasetError(
            f"{label}: {len(unknown_images)} image id(s) not in the ground truth, e.g. {unknown_images[:5]}, and "
            "the entries carry no file_name to match them by; write the predictions with `fastinst predict "
            "--save-json --data DATA` so they carry the dataset's image ids and file names"
        )
    return _checked_masks(dets, gt, label) if from_file else dets


def _has_file_name(entry: dict) -> bool:
    return isinstance(entry.get("file_name"), str) and bool(entry["file_name"])


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
    dets, label = _load_results(results)
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


def evaluate_split(
    data: str | os.PathLike,
    *,
    results: str | os.PathLike | None = None,
    model: Any = None,
    weights: str | Path | None = None,
    split: str = "val",
    output: str | os.PathLike = "runs/eval",
    device: str = "auto",
    backend: str = "torch",
    dtype: str = "fp32",
    onnx: str | Path | None = None,
    max_images: int | None = None,
    boundary: bool = False,
) -> dict | None:
    """`fastinst eval` (and `fastinst train --eval-only`) as one call: COCO mask AP on `data`'s `split` of a results
    json (`results`) or of a model (`model` + `weights`, or `onnx`/`backend`) run over the split, written to
    `output` (`metrics.json`, the PR curves; for a model also `predictions.json`), the AP lines printed. -> the
    metrics, or None on a process other than rank 0 under torchrun (the images are split over the processes; rank 0
    scores everything)."""
    import time

    import torch

    from ..classes import match_model
    from ..data.datasets import load_dataset, read_json
    from ..errors import FastInstError
    from ..factory import load_backend, resolve_device
    from ..files import check_output, write_json
    from . import distributed as dist_utils
    from .cityscapes_eval import evaluate_cityscapes, is_cityscapes
    from .predictor import Predictor, describe_run, run_info

    if max_images is not None and max_images < 1:
        raise FastInstError(f"max_images must be at least 1, got {max_images}")
    start = time.time()
    out = check_output(output, inputs=[*([results] if results else []), data], kind="dir")
    dataset = load_dataset(data, split=split)
    found: str | list[dict]
    image_ids: list[int] | None = None
    category_ids: list[int] | None = None
    classes: list[dict] | None = None
    info: dict | None = None
    if results:
        found = str(results)
        side = Path(results).with_name(Path(results).stem + ".run.json")  # what `fastinst predict` wrote beside it
        record = read_json(side) if side.is_file() else {}
        record = record if isinstance(record, dict) else {}
        info = record.get("run") if isinstance(record.get("run"), dict) else None
        if isinstance(record.get("classes"), list):
            classes = [c for c in record["classes"] if isinstance(c, dict) and {"id", "name"} <= c.keys()]
        if info:
            print(f"eval: {results} from {describe_run({k: str(v) for k, v in info.items()})}", flush=True)
    else:
        if not weights and not onnx:
            raise FastInstError("--model needs --weights PATH (a checkpoint file) or --weights official")
        where = resolve_device("cpu" if backend != "torch" else device)
        _rank, world, local = dist_utils.init_distributed(where.type)
        if where.type == "cuda" and world > 1:
            where = resolve_device(f"cuda:{local}")
        # torch: the PyTorch model; an exported network: its runtime's detect, in its precision (OpenVINO: dtype)
        net = load_backend(backend, model, weights, where, None, dtype, onnx)
        match = match_model(net, dataset, source=str(weights or onnx))  # the classes fit the split, before any image
        for line in match.notes(dataset.name):
            note(line)
        cfg = getattr(net, "cfg", None)
        queries = int(cfg.model.num_queries) if cfg is not None else 100
        if queries < 100:  # more than 100 is said by the scoring itself (COCO AP's 100 detections)
            ids = [r["image_id"] for r in dataset.records[:max_images]] if max_images else None
            warn_crowded_images(dataset.coco, ids, queries, f"the model's {queries} queries")
        runner: Any = net  # fp32: the official network; else `fastinst predict`'s fast path in that precision
        info = run_info(net, str(getattr(net, "dtype", "fp32")), str(getattr(net, "dtype_reason", "")))
        if dtype != "fp32" and isinstance(net, torch.nn.Module):  # the same `detect`, in that precision
            runner = Predictor(net, dtype=dtype)
            info = runner.run_info
        print(f"eval: {describe_run(info)}", flush=True)
        workers = min(4, os.cpu_count() or 1)  # decoding overlaps the network
        evaluator = predict_dataset(
            runner, dataset, max_images, progress=True, num_workers=workers, category_ids=match.ids
        )
        found, category_ids = evaluator.results, match.shared
        if not dist_utils.is_main():
            return None
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "predictions.json", found)
        # a part of the split: score those images; the whole split: every ground-truth image, as pycocotools does
        image_ids = sorted(set(evaluator.image_ids)) if max_images is not None else None
    # entries with file_name (fastinst predict --save-json) are matched to the split's images by it, never by position
    metrics = evaluate_results(
        found,
        dataset.coco,
        image_ids=image_ids,
        image_root=dataset.image_root,
        boundary=boundary,
        category_ids=category_ids,
        classes=classes,
    )
    if info:
        metrics["run"] = info
    if is_cityscapes(dataset):  # Cityscapes' own AP (its instance PNGs, its rules) beside COCO AP
        metrics["cityscapes"] = evaluate_cityscapes(found, dataset, image_ids=image_ids)
    target = write_report(metrics, out)
    print(
        f"{dataset.name}: mask AP {metrics['AP']:.2f} (AP50 {metrics['AP50']:.2f}, AP75 {metrics['AP75']:.2f}) "
        f"in {time.time() - start:.0f} s; wrote {target} and the PR curves"
    )
    if "boundary" in metrics:
        m = metrics["boundary"]
        print(f"{dataset.name}: boundary AP {m['AP']:.2f} (AP50 {m['AP50']:.2f}, AP75 {m['AP75']:.2f})")
    if "cityscapes" in metrics:
        m = metrics["cityscapes"]
        print(f"{dataset.name}: Cityscapes AP {m['AP']:.2f} (AP50 {m['AP50']:.2f}) over the 8 instance classes")
    return metrics


load_results = _load_results
"""The public name of `_load_results` (results list or json file -> checked entries and their label), for the
other scorers (`fastinst.engine.cityscapes_eval`)."""
