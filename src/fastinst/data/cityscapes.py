"""Cityscapes instance data (`load_cityscapes`): `gtFine/<split>/<city>/*_instanceIds.png` id maps with their
`leftImg8bit` images; `CITYSCAPES_THINGS`, the eight classes with instances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .coco import from_coco
from .core import InstanceDataset, image_size, read_annotation_png, relative
from .masks import rle_annotation

# Cityscapes label ids of the eight classes with instances (the "thing" classes of the instance benchmark).
CITYSCAPES_THINGS = {
    24: "person",
    25: "rider",
    26: "car",
    27: "truck",
    28: "bus",
    31: "train",
    32: "motorcycle",
    33: "bicycle",
}


def load_cityscapes(root: Path, split: str) -> InstanceDataset:
    """`gtFine/<split>/<city>/*_instanceIds.png` (labelId*1000+k per instance) + `leftImg8bit/<split>/...` images.

    Pixels of a thing class without an instance number (value = labelId < 1000) become one crowd region per class.
    """
    gt_dir = root / "gtFine" / split
    files = sorted(gt_dir.glob("*/*_instanceIds.png"))
    if not files:
        raise DatasetError(f"{gt_dir}: no */*_instanceIds.png files for split {split!r}")
    images: list[dict] = []
    anns: list[dict] = []
    for image_id, f in enumerate(files, 1):
        stem = f.name.removesuffix("_instanceIds.png").removesuffix("_gtFine")
        img = root / "leftImg8bit" / split / f.parent.name / f"{stem}_leftImg8bit.png"
        h, w = image_size(img)
        ids = read_annotation_png(f, (h, w), "a single-channel id map")
        if ids.ndim != 2 or ids.shape != (h, w):
            raise DatasetError(f"{f}: expected a single-channel {h}x{w} id map like its image, got {ids.shape}")
        for value in np.unique(ids):
            label = int(value) // 1000 if value >= 1000 else int(value)
            if label in CITYSCAPES_THINGS:
                anns.append(rle_annotation(ids == value, len(anns) + 1, image_id, label, int(value < 1000)))
        images.append({"id": image_id, "file_name": relative(img, root), "height": h, "width": w})
    cats = [{"id": k, "name": v} for k, v in CITYSCAPES_THINGS.items()]
    ds = from_coco(
        {"images": images, "annotations": anns, "categories": cats}, root, gt_dir, root=root, check_files=False
    )
    ds.name = f"cityscapes_{split}"
    return ds
