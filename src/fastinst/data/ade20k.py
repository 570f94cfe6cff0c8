"""ADE20K's instance track (`load_ade20k`): `ADEChallengeData2016` with the prepared `ade20k_instance_<split>.json`, or
its `annotations_instance/` PNGs (R = class, G = instance); `ADE20K_THINGS`, its 100 classes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import DatasetError, note
from .coco import from_coco, load_coco_json
from .core import ISSUES, InstanceDataset, image_size, read_annotation_png, relative
from .masks import rle_annotation

# ADE20K instance track (ADEChallengeData2016 `annotations_instance`): its 100 classes as the ids of the 150-class
# scene-parsing benchmark minus one (the ids `ade20k_instance_{train,val}.json` uses). Instance class k (1..100, the
# R value in the PNGs) is the k-th entry; the mapping to the 150 semantic classes is monotonic.
ADE20K_THINGS: tuple[tuple[int, str], ...] = (
    (7, "bed"),
    (8, "windowpane"),
    (10, "cabinet"),
    (12, "person"),
    (14, "door"),
    (15, "table"),
    (18, "curtain"),
    (19, "chair"),
    (20, "car"),
    (22, "painting"),
    (23, "sofa"),
    (24, "shelf"),
    (27, "mirror"),
    (30, "armchair"),
    (31, "seat"),
    (32, "fence"),
    (33, "desk"),
    (35, "wardrobe"),
    (36, "lamp"),
    (37, "bathtub"),
    (38, "railing"),
    (39, "cushion"),
    (41, "box"),
    (42, "column"),
    (43, "signboard"),
    (44, "chest of drawers"),
    (45, "counter"),
    (47, "sink"),
    (49, "fireplace"),
    (50, "refrigerator"),
    (53, "stairs"),
    (55, "case"),
    (56, "pool table"),
    (57, "pillow"),
    (58, "screen door"),
    (62, "bookcase"),
    (64, "coffee table"),
    (65, "toilet"),
    (66, "flower"),
    (67, "book"),
    (69, "bench"),
    (70, "countertop"),
    (71, "stove"),
    (72, "palm"),
    (73, "kitchen island"),
    (74, "computer"),
    (75, "swivel chair"),
    (76, "boat"),
    (78, "arcade machine"),
    (80, "bus"),
    (81, "towel"),
    (82, "light"),
    (83, "truck"),
    (85, "chandelier"),
    (86, "awning"),
    (87, "streetlight"),
    (88, "booth"),
    (89, "television receiver"),
    (90, "airplane"),
    (92, "apparel"),
    (93, "pole"),
    (95, "bannister"),
    (97, "ottoman"),
    (98, "bottle"),
    (102, "van"),
    (103, "ship"),
    (104, "fountain"),
    (107, "washer"),
    (108, "plaything"),
    (110, "stool"),
    (111, "barrel"),
    (112, "basket"),
    (115, "bag"),
    (116, "minibike"),
    (118, "oven"),
    (119, "ball"),
    (120, "food"),
    (121, "step"),
    (123, "trade name"),
    (124, "microwave"),
    (125, "pot"),
    (126, "animal"),
    (127, "bicycle"),
    (129, "dishwasher"),
    (130, "screen"),
    (132, "sculpture"),
    (133, "hood"),
    (134, "sconce"),
    (135, "vase"),
    (136, "traffic light"),
    (137, "tray"),
    (138, "ashcan"),
    (139, "fan"),
    (142, "plate"),
    (143, "monitor"),
    (144, "bulletin board"),
    (146, "radiator"),
    (147, "glass"),
    (148, "clock"),
    (149, "flag"),
)
assert len(ADE20K_THINGS) == 100
ADE20K_SPLITS = {"train": "training", "val": "validation"}


def load_ade20k(root: Path, split: str, image_root: Path | None = None, labels: str = "instance") -> InstanceDataset:
    """`ADEChallengeData2016`: `ade20k_instance_<split>.json` when present, else `annotations_instance/` PNGs.

    PNG R channel = class (see `ade_labels` of `load_dataset`), G channel = instance number (0 = none). Category ids
    follow the json convention: the 150-class scene-parsing id minus one.
    """
    if labels not in ("instance", "semantic"):
        raise DatasetError(f"ade_labels must be 'instance' or 'semantic', not {labels!r}")
    short = {v: k for k, v in ADE20K_SPLITS.items()}.get(split, split)
    folder = ADE20K_SPLITS.get(split, split)
    made = root / f"ade20k_instance_{short}.json"
    if made.is_file():
        ds = load_coco_json(made, image_root=image_root or root / "images" / folder, root=root)
        ds.name = f"ade20k_{short}"
        return ds
    ann_dir = root / "annotations_instance" / folder
    files = sorted(ann_dir.glob("*.png"))
    if not files:
        raise DatasetError(f"{ann_dir}: no instance PNGs (nor {made.name}) for split {split!r}")
    img_dir = Path(image_root) if image_root is not None else root / "images" / folder
    thing_of = _ade_class_table(labels)
    images: list[dict] = []
    anns: list[dict] = []
    issues: Counter[str] = Counter()
    for image_id, f in enumerate(files, 1):
        img = next(
            (img_dir / (f.stem + s) for s in (".jpg", ".png", ".jpeg") if (img_dir / (f.stem + s)).is_file()),
            img_dir / f"{f.stem}.jpg",
        )
        h, w = image_size(img)
        arr = read_annotation_png(f, (h, w), "an RGB PNG (R = class, G = instance)")
        if arr.ndim != 3 or arr.shape[2] < 2 or arr.shape[:2] != (h, w):
            raise DatasetError(
                f"{f}: expected an RGB {h}x{w} PNG (R = class, G = instance) like its image, got shape {arr.shape}"
            )
        cls, inst = arr[..., 0], arr[..., 1]
        for k in np.unique(inst):
            if k == 0:
                continue
            mask = inst == k
            values, counts = np.unique(cls[mask], return_counts=True)
            if len(values) > 1:
                issues["mixed_class"] += 1
            cid = thing_of.get(int(values[np.argmax(counts)]))
            if cid is None:
                issues["no_class"] += 1
                continue
            anns.append(rle_annotation(mask, len(anns) + 1, image_id, cid, 0))
        images.append({"id": image_id, "file_name": relative(img, img_dir), "height": h, "width": w})
    for kind, count in issues.items():
        note(f"{ann_dir}: {ISSUES[kind]}: {count}")
    cats = [{"id": i, "name": n} for i, n in ADE20K_THINGS]
    ds = from_coco(
        {"images": images, "annotations": anns, "categories": cats}, img_dir, ann_dir, root=root, check_files=False
    )
    ds.name = f"ade20k_{short}"
    return ds


def _ade_class_table(labels: str) -> dict[int, int]:
    """R value -> category id (150-class id minus one) for the 100 thing classes."""
    if labels == "instance":
        return {k: cid for k, (cid, _) in enumerate(ADE20K_THINGS, 1)}
    return {cid + 1: cid for cid, _ in ADE20K_THINGS}
