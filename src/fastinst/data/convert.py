"""Write any loaded `InstanceDataset` (YOLO, Cityscapes, ADE20K, COCO) as one COCO instances json.

Image `file_name`s are written relative to the json's folder, so `load_dataset(out_path)` finds the images again and
gives back the same masks. Segmentations are kept as loaded (polygons or RLE) unless `rle=True`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pycocotools import mask as mask_util

from ..files import write_json
from .datasets import InstanceDataset


def to_coco_json(dataset: InstanceDataset, out_path: str | os.PathLike, *, rle: bool = False) -> Path:
    """Write `dataset.coco` to `out_path` (atomically); with `rle=True` polygons are stored as compressed RLE."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    here = out.parent.resolve()
    images = []
    for im in dataset.coco["images"]:
        path = (dataset.image_root / im["file_name"]).resolve()
        images.append(dict(im, file_name=Path(os.path.relpath(path, here)).as_posix()))
    annotations = dataset.coco["annotations"]
    if rle:
        sizes = {im["id"]: (im["height"], im["width"]) for im in images}
        annotations = [dict(a, segmentation=_as_rle(a["segmentation"], *sizes[a["image_id"]])) for a in annotations]
    data = {
        "info": dataset.coco.get("info", {}),
        "licenses": dataset.coco.get("licenses", []),
        "images": images,
        "annotations": annotations,
        "categories": dataset.coco["categories"],
    }
    return write_json(out, data)


def _as_rle(seg: list | dict, h: int, w: int) -> dict:
    if isinstance(seg, dict):
        return seg
    merged = mask_util.merge(mask_util.frPyObjects(seg, h, w))
    return {"size": [h, w], "counts": merged["counts"].decode("ascii")}
