"""COCO instances files: `from_coco` checks a COCO instances dict and turns it into an `InstanceDataset` (every
reader builds such a dict and ends here); `load_coco_json` reads one annotation json, `load_coco_folder` a COCO folder
(`annotations/instances_<split>*.json` + image folders).

Category ids become contiguous indices in the order of the dataset's own ids (the COCO rule). Problems that leave the
data usable (bad polygon parts, bbox-only annotations, coordinates outside the image) are fixed or skipped and
reported in one note per kind with a count; anything else raises `DatasetError` naming the file and the entry.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_util

from ..errors import DatasetError, note
from .core import (
    ISSUES,
    SIZE_CHECK_LIMIT,
    InstanceDataset,
    check_image_entry_size,
    check_image_size,
    image_size,
    is_file,
    is_int,
    is_number,
    shown,
)
from .jsonfiles import read_json
from .masks import check_rle_strings, clean_segmentation, to_rle

COCO_SPLITS = {"train": "train2017", "val": "val2017"}

# Category ids: COCO's are positive; 0 is common (a background class); they must fit an int32 (pycocotools, torch).
MAX_CATEGORY_ID = 2**31 - 1


def from_coco(
    data: Any,
    image_root: Path,
    source: str | Path,
    *,
    name: str | None = None,
    root: Path | None = None,
    check_files: bool = True,
    check_rle: bool = False,
) -> InstanceDataset:
    """Check a COCO instances dict and build the dataset; `source` names the file in messages. `check_files` also
    compares each image file's size with its entry (from the file header; for splits up to `SIZE_CHECK_LIMIT` images,
    larger ones are checked as images are read); `check_rle` checks that RLE run lengths cover exactly their image
    (for files written by other tools)."""
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("categories"), list)
    ):
        raise DatasetError(f"{source}: not a COCO instances file (needs 'images' and 'categories' lists)")
    anns_in = data.get("annotations") or []
    issues: Counter = Counter()
    if "annotations" not in data:
        issues["no_annotations_key"] += 1
    if not isinstance(anns_in, list):
        raise DatasetError(f"{source}: 'annotations' is not a list")
    cats = _categories(data["categories"], source)
    category_ids = sorted(cats)
    contiguous = {cid: i for i, cid in enumerate(category_ids)}
    images, id_map = _images(data["images"], source)
    records = [
        {
            "file_name": str(image_root / im["file_name"]),
            "image_id": im["id"],
            "height": im["height"],
            "width": im["width"],
            "annotations": [],
        }
        for im in images
    ]
    if check_files:  # before any annotation: masks are sized by the images as they are, not as the file says
        _check_files(records, image_root, source)
    by_id = {r["image_id"]: r for r in records}
    anns_out = []
    strings: list[tuple[str, str, int, int]] | None = [] if check_rle else None  # RLE strings to check, at once
    for j, a in enumerate(anns_in):
        if not isinstance(a, dict):
            raise DatasetError(f"{source}: annotations[{j}] is not an object")
        label = f"{source}: annotations[{j}] (id {shown(a.get('id'))})"
        image_id = id_map.get(_key(a.get("image_id")))
        if image_id is None:
            raise DatasetError(f"{label} refers to unknown image id {shown(a.get('image_id'))}")
        cid = a.get("category_id")
        if not is_int(cid):
            raise DatasetError(f"{label}: 'category_id' must be an integer, got {shown(cid)}")
        if cid not in contiguous:
            raise DatasetError(f"{label} refers to unknown category id {cid!r}")
        iscrowd = a.get("iscrowd")
        if iscrowd is None:
            iscrowd = 0
        elif iscrowd not in (0, 1) or not isinstance(iscrowd, (int, float)):
            raise DatasetError(f"{label}: 'iscrowd' must be 0 or 1, got {shown(iscrowd)}")
        area, box = a.get("area"), a.get("bbox")
        box = box if box != [] else None  # no box: computed from the mask, as for a missing one
        if area is not None and not (is_number(area) and area >= 0):
            raise DatasetError(f"{label}: 'area' must be a non-negative number, got {shown(area)}")
        if box is not None and not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
            raise DatasetError(f"{label}: 'bbox' must be 4 numbers [x, y, width, height], got {shown(box)}")
        rec = by_id[image_id]
        seg = clean_segmentation(a.get("segmentation"), rec["height"], rec["width"], label, issues, strings)
        if seg is None:
            continue
        iscrowd = int(iscrowd)
        rec["annotations"].append({"category_id": contiguous[cid], "segmentation": seg, "iscrowd": iscrowd})
        out = dict(a, image_id=image_id, segmentation=seg, iscrowd=iscrowd)
        if box is None:
            out.pop("bbox", None)
        anns_out.append(out)
    if strings:
        check_rle_strings(strings)
    for out in anns_out:
        if out.get("area") is None or out.get("bbox") is None:  # pycocotools needs `area`; `bbox` for completeness
            rec = by_id[out["image_id"]]
            rle = to_rle(out["segmentation"], rec["height"], rec["width"])
            if out.get("area") is None:
                out["area"] = float(mask_util.area(rle))
            if out.get("bbox") is None:
                out["bbox"] = [float(v) for v in mask_util.toBbox(rle)]
    ids = [a.get("id") for a in anns_out]
    if any(not is_int(i) or not 0 < i < 2**63 for i in ids) or len(set(ids)) != len(ids):
        issues["renumbered"] += len(anns_out)
        for n, a in enumerate(anns_out, 1):
            a["id"] = n
    for kind, count in issues.items():
        if kind in ISSUES:
            note(f"{source}: {ISSUES[kind]}: {count}")
    coco = {
        "info": data.get("info", {}),
        "licenses": data.get("licenses", []),
        "images": images,
        "annotations": anns_out,
        "categories": [{**cats[c], "id": c} for c in category_ids],
    }
    src = Path(source)
    return InstanceDataset(
        name=name or src.stem,
        root=root or src.parent,
        image_root=Path(image_root),
        records=records,
        names=[str(cats[c].get("name", c)) for c in category_ids],
        category_ids=category_ids,
        coco=coco,
        issues=issues,
    )


def _key(value: Any) -> Any:
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else repr(value)


def _categories(entries: list, source) -> dict[int, dict]:
    cats: dict[int, dict] = {}
    for i, c in enumerate(entries):
        cid = c.get("id") if isinstance(c, dict) else None
        if not is_int(cid):
            raise DatasetError(f"{source}: categories[{i}] has no integer 'id'")
        if not 0 <= cid <= MAX_CATEGORY_ID:
            raise DatasetError(f"{source}: categories[{i}] has id {cid}, outside 0..{MAX_CATEGORY_ID}")
        if cid in cats:
            raise DatasetError(f"{source}: categories[{i}] repeats category id {cid}")
        name = c.get("name", cid)
        if not isinstance(name, str) and not is_number(name):
            raise DatasetError(f"{source}: categories[{i}] (id {cid}): 'name' must be a string, got {shown(name)}")
        cats[cid] = {k: v for k, v in c.items() if k != "id"} | {"name": str(name)}
    if not cats:
        raise DatasetError(f"{source}: no categories")
    return cats


def _images(entries: list, source) -> tuple[list[dict], dict]:
    """Checked copies of the image entries (integer ids: non-integer ids are renumbered 1..N) and old key -> id."""
    if not entries:
        raise DatasetError(f"{source}: no images")
    seen: dict = {}
    for i, im in enumerate(entries):
        if not isinstance(im, dict):
            raise DatasetError(f"{source}: images[{i}] is not an object")
        for k in ("id", "file_name", "height", "width"):
            if k not in im:
                raise DatasetError(f"{source}: images[{i}] (id {shown(im.get('id'))}) has no '{k}'")
        where = f"{source}: images[{i}] (id {shown(im['id'])})"
        if not (is_int(im["id"]) or isinstance(im["id"], str)):
            raise DatasetError(f"{where}: 'id' must be an integer or a string")
        name = im["file_name"]
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise DatasetError(f"{where}: 'file_name' must be a file name (a non-empty string), got {shown(name)}")
        check_image_entry_size(im["height"], im["width"], where)
        key = _key(im["id"])
        if key in seen:
            raise DatasetError(
                f"{source}: images[{i}] repeats image id {shown(im['id'])} (first at images[{seen[key]}])"
            )
        seen[key] = i
    numeric = all(is_int(im["id"]) and -(2**63) <= im["id"] < 2**63 for im in entries)
    id_map = {_key(im["id"]): (im["id"] if numeric else n) for n, im in enumerate(entries, 1)}
    images = [dict(im, id=id_map[_key(im["id"])]) for im in entries]
    return images, id_map


def _check_files(records: list[dict], image_root: Path, source) -> None:
    missing = [r for r in records if not os.path.isfile(r["file_name"])]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(
            f"{source}: image id {missing[0]['image_id']}: {missing[0]['file_name']} not found{more}; "
            f"images are looked up under {image_root} (pass image_root= to change)"
        )
    if len(records) <= SIZE_CHECK_LIMIT:
        for r in records:
            check_image_size(r, image_size(Path(r["file_name"])), source)


# ---------------------------------------------------------------------------------------------------------------------
# COCO layouts
# ---------------------------------------------------------------------------------------------------------------------


def load_coco_json(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, root: Path | None = None
) -> InstanceDataset:
    """A COCO instances json; images under `image_root` or, by default, next to the json, its parent or `images/`."""
    path = Path(path)
    data = read_json(path)
    if is_labelme_data(data):
        raise DatasetError(
            f"{path}: a labelme file (one image), not a COCO json; load it with load_dataset or "
            "fastinst.data.labelme.load_labelme (or convert it: fastinst convert --data FOLDER --output out.json)"
        )
    return load_coco_data(path, data, image_root=image_root, root=root)


def is_labelme_data(data: Any) -> bool:
    """Whether a json file's content is a labelme annotation (a `shapes` list, no COCO `images`)."""
    return isinstance(data, dict) and "shapes" in data and "images" not in data


def load_coco_data(
    path: Path, data: Any, image_root: str | os.PathLike | None = None, root: Path | None = None
) -> InstanceDataset:
    """`load_coco_json` on the json `data` already read from `path`."""
    if image_root is None:
        image_root = _guess_image_root(path, data)
    return from_coco(data, Path(image_root), path, root=root, check_rle=True)


def _guess_image_root(path: Path, data: Any) -> Path:
    here, stem = path.parent, path.stem.removeprefix("instances_")
    candidates = [
        here,
        here.parent,
        here / "images",
        here.parent / "images",
        here.parent / stem,
        here.parent / "images" / stem,
    ]
    images = data.get("images") if isinstance(data, dict) else None
    first = images[0].get("file_name") if isinstance(images, list) and images and isinstance(images[0], dict) else None
    if isinstance(first, str):
        for c in candidates:
            if is_file(c / first):
                return c
    return here


def load_coco_folder(root: Path, split: str, image_root: Path | None = None) -> InstanceDataset:
    """`root/annotations/instances_<split>*.json` with images in `root/<split>*/` or `root/images/<split>*/`."""
    ann_dir = root / "annotations"
    names = [split, COCO_SPLITS.get(split, split)]
    exact = [ann_dir / f"instances_{n}.json" for n in names if (ann_dir / f"instances_{n}.json").is_file()]
    found = exact[:1] or sorted(ann_dir.glob(f"instances_{split}*.json"))
    if not found:
        have = ", ".join(p.name for p in sorted(ann_dir.glob("instances_*.json"))) or "none"
        raise DatasetError(f"{ann_dir}: no instances_{split}*.json for split {split!r} (found: {have})")
    if len(found) > 1:
        raise DatasetError(
            f"{ann_dir}: several files match split {split!r} ({', '.join(p.name for p in found)}); "
            "pass the json path instead"
        )
    ann = found[0]
    stem = ann.stem.removeprefix("instances_")
    if image_root is None:
        for d in (root / stem, root / "images" / stem, root / split, root / "images" / split):
            if d.is_dir():
                image_root = d
                break
    ds = load_coco_json(ann, image_root=image_root, root=root)
    ds.name = f"{root.name}_{stem}"
    return ds
