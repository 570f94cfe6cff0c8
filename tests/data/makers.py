"""Tiny datasets written in each native layout (COCO, Ultralytics YOLO, Cityscapes, ADE20K) for the data tests.

Each maker returns the path to hand to `load_dataset` and the expected instance masks per image file name:
`{file name: [(dataset category id, bool mask, iscrowd), ...]}`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

H, W = 32, 40


def write_image(path: Path, h: int = H, w: int = W, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def box_mask(x0: int, y0: int, x1: int, y1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def box_polygon(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def polygon_mask(poly: list[float], h: int = H, w: int = W) -> np.ndarray:
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects([poly], h, w))).astype(bool)


def rle(mask: np.ndarray) -> dict:
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}


def mask_annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
    """A non-crowd COCO annotation of a bool mask: RLE segmentation, area and the mask's XYWH box."""
    ys, xs = mask.nonzero()
    box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": rle(mask), "iscrowd": 0,
            "area": float(mask.sum()), "bbox": box}  # fmt: skip


def coco_dict() -> dict:
    """Two images, categories 3 ("dog") and 7 ("cat"), polygons, one crowd RLE."""
    return {
        "images": [
            {"id": 10, "file_name": "a.jpg", "height": H, "width": W},
            {"id": 11, "file_name": "b.jpg", "height": H, "width": W},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 10,
                "category_id": 3,
                "segmentation": [box_polygon(2, 2, 12, 10)],
                "iscrowd": 0,
                "area": 80.0,
                "bbox": [2, 2, 10, 8],
            },
            {
                "id": 2,
                "image_id": 10,
                "category_id": 7,
                "segmentation": [box_polygon(14, 4, 30, 20)],
                "iscrowd": 0,
                "area": 256.0,
                "bbox": [14, 4, 16, 16],
            },
            {
                "id": 3,
                "image_id": 11,
                "category_id": 7,
                "segmentation": rle(box_mask(0, 0, 8, 8)),
                "iscrowd": 1,
                "area": 64.0,
                "bbox": [0, 0, 8, 8],
            },
        ],
    }


def make_coco(root: Path, split: str = "val2017", data: dict | None = None) -> Path:
    """`root/annotations/instances_<split>.json` + `root/<split>/*.jpg`."""
    data = data or coco_dict()
    for n, im in enumerate(data["images"]):
        write_image(root / split / im["file_name"], im["height"], im["width"], seed=n)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def make_yolo(root: Path) -> tuple[Path, dict]:
    """`data.yaml` + `images/{train,val}` + `labels/{train,val}` (normalised polygons); expected masks of `val`."""
    expected: dict = {}
    polys = {
        "val/p.jpg": [(0, box_polygon(2, 2, 12, 10)), (1, box_polygon(14, 4, 30, 20))],
        "val/q.jpg": [(1, box_polygon(4, 6, 16, 18))],
        "val/empty.jpg": [],
        "train/t.jpg": [(0, box_polygon(1, 1, 9, 9))],
    }
    for n, (name, objs) in enumerate(polys.items()):
        write_image(root / "images" / name, seed=n)
        label = root / "labels" / Path(name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        lines = [" ".join([str(c)] + [f"{v / (W if k % 2 == 0 else H):.6f}" for k, v in enumerate(p)]) for c, p in objs]
        if name != "val/empty.jpg":
            label.write_text("\n".join(lines) + "\n")
        if name.startswith("val/"):
            expected[Path(name).name] = [(c + 1, polygon_mask(p), 0) for c, p in objs]
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: person\n  1: car\n")
    return yaml, expected


def make_cityscapes(root: Path, split: str = "val") -> dict:
    """`gtFine/<split>/<city>/*_gtFine_instanceIds.png` + `leftImg8bit/<split>/<city>/*_leftImg8bit.png`."""
    expected = {}
    for n, city in enumerate(("aachen", "bonn")):
        stem = f"{city}_000000_000019"
        ids = np.full((H, W), 7, np.int32)  # road (stuff)
        ids[2:10, 2:12] = 26001  # car #1
        ids[12:20, 2:12] = 26002  # car #2
        ids[4:20, 16:24] = 24000 + n  # person (instance number n)
        ids[20:24, 26:32] = 33  # bicycle group without instance id -> crowd
        ids[0:4, 26:32] = 29000 + 1  # caravan (29): not one of the 8 classes
        gt = root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png"
        gt.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids.astype(np.uint16)).save(gt)  # 16-bit PNG, as Cityscapes ships them
        write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=n)
        expected[f"{stem}_leftImg8bit.png"] = [
            (26, ids == 26001, 0),
            (26, ids == 26002, 0),
            (24, ids == 24000 + n, 0),
            (33, ids == 33, 1),
        ]
    return expected


def make_ade20k(root: Path, split: str = "validation", labels: str = "instance") -> dict:
    """`ADEChallengeData2016/annotations_instance/<split>/*.png` (R class, G instance) + `images/<split>/*.jpg`."""
    base = root / "ADEChallengeData2016"
    expected = {}
    for n in range(2):
        stem = f"ADE_val_{n + 1:08d}"
        arr = np.zeros((H, W, 3), np.uint8)
        # instance class 4 = person (150-id 13, json id 12); class 9 = car (150-id 21, json id 20)
        r_person, r_car = (4, 9) if labels == "instance" else (13, 21)
        arr[2:10, 2:12] = (r_person, 1, 0)
        arr[12:20, 14:30] = (r_car, 2, 0)
        if n == 1:
            arr[14:22, 0:8] = (r_person, 3, 0)
        png = base / "annotations_instance" / split / f"{stem}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(png)
        write_image(base / "images" / split / f"{stem}.jpg", seed=n)
        g = arr[..., 1]
        expected[f"{stem}.jpg"] = [(12, g == 1, 0), (20, g == 2, 0)] + ([(12, g == 3, 0)] if n == 1 else [])
    return expected


def decoded(record: dict) -> list[np.ndarray]:
    """Bool masks of a record's annotations."""
    h, w = record["height"], record["width"]
    out = []
    for a in record["annotations"]:
        seg = a["segmentation"]
        r = seg if isinstance(seg, dict) else mask_util.merge(mask_util.frPyObjects(seg, h, w))
        out.append(mask_util.decode(r).astype(bool))
    return out


def _instance_key(t: tuple) -> tuple:
    """(category id, crowd flag, flat indices of the mask) of a (category id, mask, crowd flag) triple."""
    return t[0], t[2], np.flatnonzero(t[1]).tolist()


def check_against(ds, expected: dict) -> None:
    """Every record's masks, dataset category ids and crowd flags equal the maker's (order-insensitive)."""
    assert {Path(r["file_name"]).name for r in ds.records} == set(expected)
    for r in ds.records:
        want = expected[Path(r["file_name"]).name]
        got = [
            (ds.category_ids[a["category_id"]], m, a["iscrowd"])
            for a, m in zip(r["annotations"], decoded(r), strict=True)
        ]
        assert sorted(map(_instance_key, got)) == sorted(map(_instance_key, want)), r["file_name"]


def write_labelme(path: Path, shapes: list, image_path: str, image_data: str | None = None, h=H, w=W) -> Path:
    """A labelme 5.x json (`shapes` as labelme writes them) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "version": "5.5.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": image_data,
        "imageHeight": h,
        "imageWidth": w,
    }
    path.write_text(json.dumps(data, indent=2))
    return path
