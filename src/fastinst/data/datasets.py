"""Instance-segmentation datasets in five layouts, all loaded into one COCO-shaped `InstanceDataset`.

`load_dataset(spec, split)` accepts a COCO folder or annotation json, an Ultralytics segmentation YAML, a Cityscapes
root, an ADE20K `ADEChallengeData2016` folder, a short name (`coco`, `cityscapes`, `ade20k`) or an official name
(`coco_2017_val`, `OFFICIAL_NAMES`) looked up under `datasets_root()`. Every loader first builds a COCO instances
dict; `from_coco` then checks it and turns it into records (see docs/DEVELOPING.md). Category ids become contiguous
indices in the order of the dataset's own ids (the COCO rule). Problems that leave the data usable (bad polygon
parts, bbox-only annotations, coordinates outside the image) are fixed or skipped and reported in one warning per kind
with a count; anything else raises `DatasetError` naming the file and the entry. The layouts are documented in
docs/datasets.md.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
from pycocotools import mask as mask_util

from ..errors import DatasetError, note
from .images import DEFAULT_MAX_PIXELS, PIL_ERRORS, is_image_file

SHORT_NAMES = {"coco": "coco", "cityscapes": "cityscapes", "ade20k": "ADEChallengeData2016"}
COCO_SPLITS = {"train": "train2017", "val": "val2017"}

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

_ISSUES = {
    "bad_parts": "dropped polygon parts with an odd number of or fewer than 6 coordinates",
    "no_polygon": "dropped annotations left without a valid polygon",
    "bbox_only": "skipped annotations without a segmentation (bbox only)",
    "clipped": "clipped polygons reaching outside their image",
    "mixed_class": "instances whose pixels carry several classes (majority class used)",
    "no_class": "skipped instances whose pixels carry no thing class",
    "renumbered": "renumbered annotation ids (missing, repeated or not positive)",
}


@dataclass
class InstanceDataset:
    """One split: `records` (see docs/DEVELOPING.md), contiguous `names` / `category_ids`, and the COCO dict `coco`.

    `coco["images"][i]["file_name"]` is relative to `image_root`; record `file_name`s are absolute.
    """

    name: str
    root: Path
    image_root: Path
    records: list[dict]
    names: list[str]
    category_ids: list[int]
    coco: dict
    # what loading skipped or fixed, by kind (keys of `_ISSUES`, plus "no_annotations_key"): used to explain an
    # unusable training split
    issues: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.records)

    def background_images(self) -> int:
        """Images without a non-crowd instance (negatives in training)."""
        return sum(not has_instance(r) for r in self.records)


def has_instance(record: dict) -> bool:
    """Whether a record has an instance to learn from (a non-crowd annotation); the others are background images."""
    return any(a["iscrowd"] == 0 for a in record["annotations"])


def drop_unused_categories(ds: InstanceDataset) -> list[str]:
    """Remove, in place, the categories no instance of `ds` uses (labelme's `_background_`, a category list copied
    from another dataset) so they do not become classes; -> their names. Only non-crowd annotations make a category
    used: crowd regions are no training target (and labelme's `__ignore__` regions are copied into several classes).
    The crowd regions of the removed categories go with them. Class indices stay in category-id order."""
    used = {a["category_id"] for a in ds.coco["annotations"] if not a.get("iscrowd")}
    keep = [i for i, cid in enumerate(ds.category_ids) if cid in used]
    if len(keep) == len(ds.category_ids) or not keep:
        return []
    dropped = [ds.names[i] for i in range(len(ds.names)) if i not in set(keep)]
    new_index = {old: new for new, old in enumerate(keep)}
    for r in ds.records:
        r["annotations"] = [a for a in r["annotations"] if a["category_id"] in new_index]
        for a in r["annotations"]:
            a["category_id"] = new_index[a["category_id"]]
    ds.names = [ds.names[i] for i in keep]
    ds.category_ids = [ds.category_ids[i] for i in keep]
    ds.coco = dict(
        ds.coco,
        annotations=[a for a in ds.coco["annotations"] if a["category_id"] in used],
        categories=[c for c in ds.coco["categories"] if c["id"] in used],
    )
    return dropped


def unusable_for_training(ds: InstanceDataset, source: str) -> str | None:
    """Why `ds` has nothing to learn from (no image with a non-crowd instance), naming `source` and the cause; None
    when it can be trained on."""
    if any(has_instance(r) for r in ds.records):
        return None
    n = len(ds.records)
    if ds.issues.get("no_annotations_key"):
        cause = "the file has no 'annotations' list"
    elif not ds.coco["annotations"] and not any(ds.issues.get(k) for k in ("bbox_only", "no_polygon")):
        cause = "it has no annotations"
    elif ds.issues.get("bbox_only") or ds.issues.get("no_polygon"):
        skipped = ds.issues.get("bbox_only", 0) + ds.issues.get("no_polygon", 0)
        crowd = len(ds.coco["annotations"])
        rest = f" and the other {crowd} are crowd regions" if crowd else ""
        cause = f"{skipped} annotations lack a usable segmentation (bounding boxes only?){rest}; masks are needed"
    else:
        cause = "every annotation is a crowd region (iscrowd=1), which training ignores"
    return f"{source}: no instance to train on in {n} images: {cause}"


# ---------------------------------------------------------------------------------------------------------------------
# Entry point and layout detection
# ---------------------------------------------------------------------------------------------------------------------


def datasets_root() -> Path:
    """Where short and official dataset names live: `$FASTINST_DATASETS`, else `$DETECTRON2_DATASETS` (the official
    repository's variable), else `./datasets`."""
    return Path(os.environ.get("FASTINST_DATASETS") or os.environ.get("DETECTRON2_DATASETS") or "datasets")


# The dataset names of the official configs (DATASETS.TRAIN / TEST) -> (folder under `datasets_root()`, split), in the
# layout of the official datasets/README.md: coco/{annotations,train2017,val2017}, ADEChallengeData2016 with the
# prepared ade20k_instance_{train,val}.json, cityscapes/{gtFine,leftImg8bit}.
OFFICIAL_NAMES: dict[str, tuple[str, str]] = {
    "coco_2017_train": ("coco", "train"),
    "coco_2017_val": ("coco", "val"),
    "ade20k_instance_train": ("ADEChallengeData2016", "train"),
    "ade20k_instance_val": ("ADEChallengeData2016", "val"),
    "cityscapes_fine_instance_seg_train": ("cityscapes", "train"),
    "cityscapes_fine_instance_seg_val": ("cityscapes", "val"),
}


def official_dataset(spec: str | os.PathLike) -> tuple[Path, str] | None:
    """(dataset folder, split) for an official dataset name (`coco_2017_val`), or None for anything else (an
    existing path wins over a name). `DatasetError` when the name's folder is missing under the datasets root."""
    name = str(spec)
    if name not in OFFICIAL_NAMES or Path(name).exists():
        return None
    folder, split = OFFICIAL_NAMES[name]
    path = datasets_root() / folder
    if not path.is_dir():
        raise DatasetError(
            f"{name}: expected its data in {path} (the official datasets/README.md layout, see docs/datasets.md); "
            "set $FASTINST_DATASETS or $DETECTRON2_DATASETS to the folder that holds it"
        )
    return path, split


def load_dataset(
    spec: str | os.PathLike,
    split: str = "val",
    *,
    filter_empty: bool = False,
    image_root: str | os.PathLike | None = None,
    ade_labels: str = "instance",
) -> InstanceDataset:
    """Load split `split` of the dataset `spec` (a folder, a .json / .yaml file or a short name).

    An official dataset name (`coco_2017_train`, see `OFFICIAL_NAMES`) names its split itself; `split` is then unused.
    `filter_empty` drops images without a non-crowd annotation (for training). `image_root` overrides where the
    images of a COCO json are. `ade_labels`: how to read the R channel of ADE20K instance PNGs: `"instance"` (the
    released data: instance-track class 1..100) or `"semantic"` (a 150-class scene-parsing id; non-thing ids ignored).
    """
    named = official_dataset(spec)  # an official name fixes its split: coco_2017_val is coco's val
    path, split = named if named is not None else (_resolve(spec), split)
    root = Path(image_root) if image_root is not None else None
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            data = read_json(path)
            if _is_labelme_file(data):  # one labelme file: a dataset of one image
                from .labelme import load_labelme  # labelme.py builds on this module

                ds = load_labelme(path, split)
            else:
                ds = _coco_json(path, data, image_root=root)
        elif suffix in (".yaml", ".yml"):
            ds = load_yolo(path, split)
        else:
            raise DatasetError(f"{path}: expected a COCO .json, an Ultralytics .yaml or a dataset folder")
    else:
        kind, base = detect_layout(path)
        if kind == "cityscapes":
            ds = load_cityscapes(base, split)
        elif kind == "ade20k":
            ds = load_ade20k(base, split, image_root=root, labels=ade_labels)
        elif kind == "coco":
            ds = load_coco_folder(base, split, image_root=root)
        elif kind == "labelme":
            from .labelme import load_labelme  # labelme.py builds on this module

            ds = load_labelme(base, split)
        else:
            ds = load_yolo(base, split)
    if filter_empty:
        ds.records = [r for r in ds.records if has_instance(r)]
    return ds


def _resolve(spec: str | os.PathLike) -> Path:
    path = Path(spec).expanduser()
    if path.exists():
        return path
    base = datasets_root()
    candidate = base / SHORT_NAMES.get(str(spec).lower(), str(spec))
    if candidate.exists():
        return candidate
    raise DatasetError(
        f"{spec}: no such file or folder (nor {candidate}); the short names "
        f"{', '.join(SHORT_NAMES)} are looked up under $FASTINST_DATASETS or $DETECTRON2_DATASETS (now {base})"
    )


def detect_layout(folder: Path) -> tuple[str, Path]:
    """-> (`cityscapes` | `ade20k` | `coco` | `yolo` | `labelme`, the folder or YAML file to load) for a dataset
    folder. A labelme folder: its json files (or those of its train/val sub-folders) have a `shapes` list."""
    if (folder / "gtFine").is_dir():
        return "cityscapes", folder
    for base in (folder / "ADEChallengeData2016", folder):
        if (base / "annotations_instance").is_dir() or any(base.glob("ade20k_instance_*.json")):
            return "ade20k", base
    if any((folder / "annotations").glob("instances_*.json")):
        return "coco", folder
    yamls = sorted(p for p in folder.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
    if len(yamls) == 1:
        return "yolo", yamls[0]
    from .labelme import find_labelme

    if find_labelme(folder):
        return "labelme", folder
    from .label_images import find_label_images

    found = find_label_images(folder)
    if found is not None:
        import shlex

        masks, images = (shlex.quote(str(f)) if f is not None else "IMAGES_DIR" for f in found)
        raise DatasetError(
            f"{folder}: not a dataset layout fastinst knows, but {masks} looks like instance label images (one "
            f"integer per instance): convert them first with `fastinst convert --masks {masks} --images {images} "
            '--output data.json` (optionally --class NAME), then use --data data.json (docs/datasets.md, "Instance '
            'label images")'
        )
    raise DatasetError(
        f"{folder}: not a dataset layout fastinst knows (COCO annotations/instances_*.json, "
        "Cityscapes gtFine/, ADE20K annotations_instance/, one Ultralytics .yaml or labelme *.json files); "
        "see docs/datasets.md"
    )


# ---------------------------------------------------------------------------------------------------------------------
# File helpers
# ---------------------------------------------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """Parsed JSON, or `DatasetError` for a missing, empty or malformed file (also: nested too deeply for Python's
    parser, or a number of more than 4,300 digits, Python's limit for reading an integer)."""
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise DatasetError(f"{path}: not valid JSON here (nested more deeply than the parser can follow)") from None
    except ValueError as e:  # int("7" * 5000): Python's limit on the digits of an integer
        raise DatasetError(f"{path}: not valid JSON here ({_parse_limit(e)})") from None


def read_yaml(path: Path) -> dict:
    import yaml

    text = _read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DatasetError(f"{path}: not valid YAML{where} ({getattr(e, 'problem', None) or e})") from None
    except RecursionError:
        raise DatasetError(f"{path}: not valid YAML here (nested more deeply than the parser can follow)") from None
    except ValueError as e:  # a number of more than 4,300 digits
        raise DatasetError(f"{path}: not valid YAML here ({_parse_limit(e)})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a YAML mapping with path/train/val/names keys")
    return data


def _parse_limit(e: ValueError) -> str:
    """What a parser's ValueError means, in words: Python reads integers of at most 4,300 digits."""
    if "digits" in str(e):
        return f"a number has more than {sys.get_int_max_str_digits()} digits"
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _read_text(path: Path) -> str:
    """A text file's content (UTF-8; a byte-order mark, as Windows editors write, is dropped)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None
    if not text.strip():
        raise DatasetError(f"{path}: file is empty")
    return text


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image as `read_image` returns it (EXIF rotation applied), from the header only."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except PIL_ERRORS as e:  # PIL raises many types for broken files
        raise DatasetError(f"{path}: cannot read image ({e})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def masks_to_rles(masks: np.ndarray) -> list[dict]:
    """bool (N, H, W) masks -> N compressed COCO RLEs with int `size` and str `counts` (JSON-ready)."""
    if len(masks) == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(np.asarray(masks, dtype=bool).transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def mask_to_rle(mask: np.ndarray) -> dict:
    """A bool (H, W) mask as compressed COCO RLE with a str `counts` (JSON-ready)."""
    return masks_to_rles(np.asarray(mask)[None])[0]


def _rle_annotation(mask: np.ndarray, ann_id: int, image_id: int, category_id: int, iscrowd: int) -> dict:
    rle = mask_to_rle(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle,
        "area": float(mask_util.area(rle)),
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
        "iscrowd": iscrowd,
    }


# ---------------------------------------------------------------------------------------------------------------------
# COCO dict -> records (shared by every layout)
# ---------------------------------------------------------------------------------------------------------------------


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
        label = f"{source}: annotations[{j}] (id {_shown(a.get('id'))})"
        image_id = id_map.get(_key(a.get("image_id")))
        if image_id is None:
            raise DatasetError(f"{label} refers to unknown image id {_shown(a.get('image_id'))}")
        cid = a.get("category_id")
        if not is_int(cid):
            raise DatasetError(f"{label}: 'category_id' must be an integer, got {_shown(cid)}")
        if cid not in contiguous:
            raise DatasetError(f"{label} refers to unknown category id {cid!r}")
        iscrowd = a.get("iscrowd")
        if iscrowd is None:
            iscrowd = 0
        elif iscrowd not in (0, 1) or not isinstance(iscrowd, (int, float)):
            raise DatasetError(f"{label}: 'iscrowd' must be 0 or 1, got {_shown(iscrowd)}")
        area, box = a.get("area"), a.get("bbox")
        box = box if box != [] else None  # no box: computed from the mask, as for a missing one
        if area is not None and not (is_number(area) and area >= 0):
            raise DatasetError(f"{label}: 'area' must be a non-negative number, got {_shown(area)}")
        if box is not None and not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
            raise DatasetError(f"{label}: 'bbox' must be 4 numbers [x, y, width, height], got {_shown(box)}")
        rec = by_id[image_id]
        seg = _clean_segmentation(a.get("segmentation"), rec["height"], rec["width"], label, issues, strings)
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
            rle = _to_rle(out["segmentation"], rec["height"], rec["width"])
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
        if kind in _ISSUES:
            note(f"{source}: {_ISSUES[kind]}: {count}")
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


def is_int(value: Any) -> TypeGuard[int]:
    """Whether `value` is an integer (a JSON/YAML whole number; `True` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether `value` is a finite number (an int or a float; not a bool, NaN, ±inf, nor an int beyond float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _shown(value: Any, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters: a bad value named in a one-line message, whatever its size."""
    text = repr(value) if not isinstance(value, (dict, list)) or len(value) < 100 else f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Category ids: COCO's are positive; 0 is common (a background class); they must fit an int32 (pycocotools, torch).
MAX_CATEGORY_ID = 2**31 - 1


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
            raise DatasetError(f"{source}: categories[{i}] (id {cid}): 'name' must be a string, got {_shown(name)}")
        cats[cid] = {k: v for k, v in c.items() if k != "id"} | {"name": str(name)}
    if not cats:
        raise DatasetError(f"{source}: no categories")
    return cats


def check_image_entry_size(h: Any, w: Any, where: str) -> tuple[int, int]:
    """(h, w) when both are positive integers whose product stays within the pixels `read_image` decodes
    (`DEFAULT_MAX_PIXELS`); else `DatasetError` naming `where`. Masks are allocated from these sizes, so a size no
    image can have is refused before anything is."""
    if not (is_int(h) and is_int(w) and h > 0 and w > 0):
        raise DatasetError(f"{where}: 'height' and 'width' must be positive integers, got {_shown(h)} x {_shown(w)}")
    if h * w > DEFAULT_MAX_PIXELS:
        raise DatasetError(
            f"{where}: {w}x{h} is {h * w / 1e6:.3g} megapixels, more than the {DEFAULT_MAX_PIXELS / 1e6:.0f} "
            "megapixels images are read with"
        )
    return h, w


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
                raise DatasetError(f"{source}: images[{i}] (id {_shown(im.get('id'))}) has no '{k}'")
        where = f"{source}: images[{i}] (id {_shown(im['id'])})"
        if not (is_int(im["id"]) or isinstance(im["id"], str)):
            raise DatasetError(f"{where}: 'id' must be an integer or a string")
        name = im["file_name"]
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise DatasetError(f"{where}: 'file_name' must be a file name (a non-empty string), got {_shown(name)}")
        check_image_entry_size(im["height"], im["width"], where)
        key = _key(im["id"])
        if key in seen:
            raise DatasetError(
                f"{source}: images[{i}] repeats image id {_shown(im['id'])} (first at images[{seen[key]}])"
            )
        seen[key] = i
    numeric = all(is_int(im["id"]) and -(2**63) <= im["id"] < 2**63 for im in entries)
    id_map = {_key(im["id"]): (im["id"] if numeric else n) for n, im in enumerate(entries, 1)}
    images = [dict(im, id=id_map[_key(im["id"])]) for im in entries]
    return images, id_map


def _clean_segmentation(
    seg: Any, h: int, w: int, label: str, issues: Counter, strings: list | None = None
) -> list | dict | None:
    """Valid polygons (clipped to the image) or compressed RLE; None (counted) when nothing usable is left.

    Nothing is allocated from what the entry claims: an RLE must have its image's size and run lengths that cover
    exactly its pixels (checked before pycocotools decodes anything: its decoder trusts them), and polygon
    coordinates are finite numbers, clipped to the image before they are rasterised. Compressed RLE strings are
    appended to `strings` as (label, counts, h, w) for `check_rle_strings` (None: not checked, for our own)."""
    if not seg:
        issues["bbox_only"] += 1
        return None
    if isinstance(seg, dict):
        return _clean_rle(seg, h, w, label, strings)
    if not isinstance(seg, list):
        raise DatasetError(f"{label}: segmentation is neither polygons nor RLE")
    parts = []
    for k, part in enumerate(seg):
        if not isinstance(part, list):
            raise DatasetError(
                f"{label}: segmentation[{k}] is {_shown(part)}, not a polygon (a list of x, y coordinates)"
            )
        if len(part) < 6 or len(part) % 2:
            issues["bad_parts"] += 1
            continue
        try:  # the sum is NaN / inf / overflows when any coordinate is: one C-speed pass over COCO's many polygons
            finite = is_number(sum(part))
        except (TypeError, OverflowError):
            finite = False
        if not finite:
            raise DatasetError(f"{label}: polygon coordinates are not finite numbers")
        # plain min/max: ~10x faster than numpy on COCO's many short polygons
        bounds = (min(part[0::2]), min(part[1::2]), max(part[0::2]), max(part[1::2]))
        if bounds[0] < 0 or bounds[1] < 0 or bounds[2] > w or bounds[3] > h:
            issues["clipped"] += 1
            arr = np.asarray(part, dtype=np.float64)
            arr[0::2], arr[1::2] = np.clip(arr[0::2], 0, w), np.clip(arr[1::2], 0, h)
            part = arr.tolist()
        parts.append(part)
    if not parts:
        issues["no_polygon"] += 1
        return None
    return parts


def _clean_rle(seg: dict, h: int, w: int, label: str, strings: list | None) -> dict:
    """A COCO RLE entry checked against its (h, w) image, as compressed RLE with a str `counts` (a string is
    appended to `strings` for `check_rle_strings`, when not None)."""
    if "counts" not in seg or "size" not in seg:
        raise DatasetError(f"{label}: RLE segmentation needs 'counts' and 'size'")
    size, counts = seg["size"], seg["counts"]
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
        raise DatasetError(f"{label}: RLE 'size' must be [height, width] (two integers), got {_shown(size)}")
    if size != [h, w]:
        raise DatasetError(f"{label}: RLE size {size} does not match its image ({h}x{w})")
    if isinstance(counts, str):
        if strings is not None:
            strings.append((label, counts, h, w))
        return {"size": [h, w], "counts": counts}
    if not isinstance(counts, list) or not all(is_int(c) for c in counts):
        raise DatasetError(
            f"{label}: RLE 'counts' must be a compressed string or a list of run lengths (integers), "
            f"got {_shown(counts)}"
        )
    if any(c < 0 for c in counts):
        raise DatasetError(f"{label}: RLE has a negative run length")
    if sum(counts) != h * w:
        raise DatasetError(f"{label}: RLE run lengths add up to {sum(counts)} pixels, its image has {h}x{w}")
    try:
        rle = mask_util.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    except (TypeError, ValueError, OverflowError) as e:
        raise DatasetError(f"{label}: bad RLE ({e})") from None
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def rle_string_total(counts: str, label: str) -> int:
    """Sum of the run lengths in a compressed COCO RLE string. The format: each run length is stored as a signed
    number in 5-bit groups (least significant first), one character `48 + group` each, bit 0x20 = more groups follow;
    from the third run on, the stored number is the difference to the run two places before."""
    runs: list[int] = []
    pos, n = 0, len(counts)
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                raise DatasetError(f"{label}: compressed RLE string ends in the middle of a run length")
            if shift >= 35:  # 7 characters hold 35 bits, more than any image's pixel count (pycocotools: 64 bits)
                raise DatasetError(f"{label}: compressed RLE string has a run length of more than 7 characters")
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                raise DatasetError(f"{label}: compressed RLE string has a character {counts[pos]!r} outside the format")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value -= 1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise DatasetError(f"{label}: compressed RLE string decodes to a negative run length")
        runs.append(value)
    return sum(runs)


def check_rle_strings(items: list[tuple[str, str, int, int]]) -> None:
    """`DatasetError` for the first (label, compressed RLE string, h, w) whose string breaks the format or whose run
    lengths do not cover exactly h x w pixels: pycocotools' decoder writes as many pixels as the runs say into an
    h x w buffer, so a string is never decoded before it passed here."""
    totals, problems = rle_string_totals([counts for _, counts, _, _ in items])
    bad = np.flatnonzero((problems != 0) | (totals != np.array([h * w for _, _, h, w in items], np.int64)))
    if len(bad):
        label, _, h, w = items[bad[0]]
        code = int(problems[bad[0]])
        if code:
            raise DatasetError(f"{label}: {RLE_PROBLEMS[code]}")
        raise DatasetError(f"{label}: RLE run lengths add up to {totals[bad[0]]} pixels, its image has {h}x{w}")


# Why `rle_string_totals` refuses a string (its codes).
RLE_PROBLEMS = {
    1: "compressed RLE string has a character outside the format",
    2: "compressed RLE string ends in the middle of a run length",
    3: "compressed RLE string has a run length of more than 7 characters",
    4: "compressed RLE string decodes to a negative run length",
}
_RLE_CHUNK = 1 << 22  # characters decoded at once (~10 int64 arrays of this length)


def rle_string_totals(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`rle_string_total` of many strings at numpy speed -> (int64 totals, int8 problem codes: 0 = fine, else a key
    of `RLE_PROBLEMS`, in which case the total means nothing). A results file holds hundreds of thousands of masks:
    ~100x faster than the character loop."""
    totals = np.zeros(len(strings), np.int64)
    problems = np.zeros(len(strings), np.int8)
    start = 0
    while start < len(strings):
        stop, size = start, 0
        while stop < len(strings) and (size == 0 or size + len(strings[stop]) <= _RLE_CHUNK):
            size += len(strings[stop])
            stop += 1
        totals[start:stop], problems[start:stop] = _rle_chunk(strings[start:stop])
        start = stop
    return totals, problems


def _rle_chunk(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    n = len(strings)
    totals = np.zeros(n, np.int64)
    problems = np.zeros(n, np.int8)
    usable = np.fromiter((s.isascii() for s in strings), bool, n)
    problems[~usable] = 1
    lens = np.where(usable, np.fromiter((len(s) for s in strings), np.int64, n), 0)
    if not lens.any():
        return totals, problems
    text = "".join(s for s, ok in zip(strings, usable, strict=True) if ok).encode("ascii")
    c = np.frombuffer(text, np.uint8) - np.uint8(48)  # a character's 6 bits (wraps around below '0')
    bounds = np.cumsum(lens)
    bad = c >= 64
    if bad.any():
        problems[np.unique(np.searchsorted(bounds, np.flatnonzero(bad), side="right"))] = 1
        c = np.where(bad, np.uint8(0), c)
    end = (c & 0x20) == 0  # the last character of a number
    last = bounds[lens > 0] - 1
    unfinished = np.zeros(n, bool)
    unfinished[lens > 0] = ~end[last]
    problems[unfinished & (problems == 0)] = 2
    end[last] = True  # numbers never run on into the next string
    ends = np.flatnonzero(end)
    starts = np.concatenate([[0], ends[:-1] + 1])
    length = ends - starts + 1
    gsid = np.searchsorted(bounds, ends, side="right")  # the string of each number
    too_long = np.unique(gsid[length > 7])
    problems[too_long[problems[too_long] == 0]] = 3
    value = np.zeros(len(ends), np.int64)
    for j in range(min(int(length.max()), 7)):  # character j of every number at once
        here = length > j
        value[here] += (c[starts[here] + j] & 0x1F).astype(np.int64) << (5 * j)
    shift = 5 * np.minimum(length, 7)
    negative = (c[ends] & 0x10) != 0
    value[negative] -= np.left_shift(np.int64(1), shift[negative])  # sign extension
    first = np.searchsorted(gsid, np.arange(n))  # each string's first number
    m = np.arange(len(value)) - first[gsid]  # the number's place in its string
    runs = np.where(m == 0, value, 0)
    for chain in ((m % 2 == 1), (m % 2 == 0) & (m >= 2)):  # from the third run on, run m adds run m - 2
        csum = np.cumsum(np.where(chain, value, 0))
        before = np.concatenate([[0], csum])[first]  # the chain's sum before each string's first number
        runs += np.where(chain, csum - before[gsid], 0)
    negative_run = np.unique(gsid[runs < 0])
    problems[negative_run[problems[negative_run] == 0]] = 4
    has = np.flatnonzero(np.bincount(gsid, minlength=n) > 0)
    totals[has] = np.add.reduceat(runs, first[has])
    return totals, problems


def json_rle(seg: list | dict, h: int, w: int) -> dict:
    """Polygons (merged into one mask) or an RLE dict as compressed COCO RLE with str `counts` (JSON-ready); an RLE
    dict is returned as it is."""
    if isinstance(seg, dict):
        return seg
    merged = mask_util.merge(mask_util.frPyObjects(seg, h, w))
    return {"size": [h, w], "counts": merged["counts"].decode("ascii")}


def _to_rle(seg: list | dict, h: int, w: int) -> dict:
    if isinstance(seg, dict):
        return seg
    return mask_util.merge(mask_util.frPyObjects(seg, h, w))


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


# Splits up to this many images have every image's size checked against the annotation file when loaded (from the
# headers: ~1 s per 5,000 images); larger ones (COCO train) are checked image by image as they are read.
SIZE_CHECK_LIMIT = 5000


def check_image_size(record: dict, size: tuple[int, int], source: str | Path | None = None) -> None:
    """`DatasetError` when an image's real (height, width) differs from its annotation entry: masks drawn for another
    size would be scored or trained against the wrong pixels."""
    h, w = size
    if (h, w) != (record["height"], record["width"]):
        hint = " (EXIF rotation? the entry has them swapped)" if (w, h) == (record["height"], record["width"]) else ""
        where = f"{source}: image id {record['image_id']}" if source else f"image id {record['image_id']}"
        raise DatasetError(
            f"{where}: {record['file_name']} is {w}x{h} pixels but the annotations say "
            f"{record['width']}x{record['height']}{hint}"
        )


# ---------------------------------------------------------------------------------------------------------------------
# COCO layouts
# ---------------------------------------------------------------------------------------------------------------------


def load_coco_json(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, root: Path | None = None
) -> InstanceDataset:
    """A COCO instances json; images under `image_root` or, by default, next to the json, its parent or `images/`."""
    path = Path(path)
    data = read_json(path)
    if _is_labelme_file(data):
        raise DatasetError(
            f"{path}: a labelme file (one image), not a COCO json; load it with load_dataset or "
            "fastinst.data.labelme.load_labelme (or convert it: fastinst convert --data FOLDER --output out.json)"
        )
    return _coco_json(path, data, image_root=image_root, root=root)


def _is_labelme_file(data: Any) -> bool:
    """Whether a json file's content is a labelme annotation (a `shapes` list, no COCO `images`)."""
    return isinstance(data, dict) and "shapes" in data and "images" not in data


def _coco_json(
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
            if _is_file(c / first):
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


# ---------------------------------------------------------------------------------------------------------------------
# Ultralytics YOLO segmentation
# ---------------------------------------------------------------------------------------------------------------------


def load_yolo(yaml_path: Path, split: str) -> InstanceDataset:
    """Ultralytics segmentation data: `names`, `path`, `<split>` (folder, .txt list or a list of them) in a YAML.

    Labels sit in `labels/` mirroring `images/`; each line `cls x1 y1 x2 y2 ...` is one polygon in coordinates
    normalised to [0, 1]. Category ids are the class indices plus one (COCO files start at 1).
    """
    cfg = read_yaml(yaml_path)
    names = _yolo_names(cfg.get("names"), yaml_path)
    nc = cfg.get("nc")
    if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or nc != len(names)):
        raise DatasetError(f"{yaml_path}: 'nc: {nc}' disagrees with 'names', which lists {len(names)} classes")
    root = _yolo_root(cfg, yaml_path)
    entry = cfg.get(split)
    if entry is None:
        have = ", ".join(k for k in ("train", "val", "test") if cfg.get(k)) or "none"
        raise DatasetError(f"{yaml_path}: no '{split}' entry (splits: {have})")
    items = entry if isinstance(entry, list) else [entry]
    if not items or not all(isinstance(item, str) and item.strip() for item in items):
        raise DatasetError(
            f"{yaml_path}: '{split}' must name an image folder, a .txt list of images or a list of them, "
            f"got {_shown(entry)}"
        )
    files = []
    for item in items:
        files += _yolo_images(root / item, yaml_path)
    if not files:
        raise DatasetError(f"{yaml_path}: split {split!r} holds no images")
    files = sorted(set(files))
    images: list[dict] = []
    anns: list[dict] = []
    for image_id, f in enumerate(files, 1):
        h, w = image_size(f)
        images.append({"id": image_id, "file_name": _relative(f, root), "height": h, "width": w})
        for cls, coords in _yolo_labels(_label_path(f), names, yaml_path):
            seg = [] if len(coords) == 4 else [[v * (w if k % 2 == 0 else h) for k, v in enumerate(coords)]]
            anns.append(
                {"id": len(anns) + 1, "image_id": image_id, "category_id": cls + 1, "segmentation": seg, "iscrowd": 0}
            )
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names) if n is not None]
    ds = from_coco(
        {"images": images, "annotations": anns, "categories": cats}, root, yaml_path, root=root, check_files=False
    )
    ds.name = f"{yaml_path.stem}_{split}"
    return ds


# The most classes a dataset may have (`model.num_classes`' range in fastinst.config).
MAX_CLASSES = 1 << 20


def _yolo_names(names: Any, yaml_path: Path) -> list[str | None]:
    def name(value: Any) -> str:
        if isinstance(value, str) or is_number(value):
            return str(value)
        raise DatasetError(
            f"{yaml_path}: 'names' entries must be class names (strings), got {_shown(value)} (quote a name YAML "
            "reads as something else, such as yes, no, null or a list)"
        )

    if isinstance(names, list) and names:
        if len(names) > MAX_CLASSES:
            raise DatasetError(f"{yaml_path}: 'names' lists {len(names)} classes, more than {MAX_CLASSES}")
        return [name(n) for n in names]
    if isinstance(names, dict) and names:
        table: dict[int, str] = {}
        for k, v in names.items():
            if is_int(k) or (isinstance(k, str) and k.strip().isdigit()):
                index = int(k)
            else:
                raise DatasetError(f"{yaml_path}: 'names' keys must be class indices, got {_shown(k)}")
            if not 0 <= index < MAX_CLASSES:
                raise DatasetError(f"{yaml_path}: 'names' has the class index {index}, outside 0..{MAX_CLASSES - 1}")
            table[index] = name(v)
        return [table.get(i) for i in range(max(table) + 1)]
    raise DatasetError(f"{yaml_path}: 'names' must be a non-empty list or a {{index: name}} mapping")


def _yolo_root(cfg: dict, yaml_path: Path) -> Path:
    path = cfg.get("path")
    if not path:
        return yaml_path.parent
    if not isinstance(path, str):
        raise DatasetError(f"{yaml_path}: 'path' must be a folder (a string), got {_shown(path)}")
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in (yaml_path.parent, datasets_root()):
        if _is_dir(base / p):
            return base / p
    raise DatasetError(f"{yaml_path}: path {path!r} is not a folder (looked next to the YAML and in {datasets_root()})")


def _is_dir(p: Path) -> bool:
    """`p.is_dir()`, False also for a name the system refuses (too long, a NUL byte)."""
    try:
        return p.is_dir()
    except (OSError, ValueError):
        return False


def _is_file(p: Path) -> bool:
    """`p.is_file()`, False also for a name the system refuses (too long, a NUL byte)."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def _yolo_images(p: Path, yaml_path: Path) -> list[Path]:
    if _is_dir(p):
        return [f for f in p.rglob("*") if is_image_file(f) and f.is_file()]
    if _is_file(p) and p.suffix == ".txt":
        out = []
        for line in _read_text(p).splitlines():
            line = line.strip()
            if line:
                f = Path(line) if Path(line).is_absolute() else p.parent / line
                if not _is_file(f):
                    raise DatasetError(f"{p}: listed image {line} not found")
                out.append(f)
        return out
    raise DatasetError(f"{yaml_path}: {p} is neither an image folder nor a .txt list")


def _label_path(image: Path) -> Path:
    """`.../images/a/b.jpg` -> `.../labels/a/b.txt` (the last `images` folder in the path is swapped)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _yolo_labels(path: Path, names: list[str | None], yaml_path: Path) -> list[tuple[int, list[float]]]:
    if not path.is_file():
        return []  # an image without a label file has no objects
    num_classes = len(names)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({_first_line(e)})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DatasetError(f"{path}:{n}: expected numbers 'cls x1 y1 x2 y2 ...', got {line.strip()!r}") from None
        cls, coords = values[0], values[1:]
        if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < num_classes:
            raise DatasetError(f"{path}:{n}: class {fields[0]} is not an index into the {num_classes} names")
        if names[int(cls)] is None:
            raise DatasetError(f"{path}:{n}: class {int(cls)} has no name in {yaml_path} ('names')")
        if len(coords) % 2:
            raise DatasetError(f"{path}:{n}: odd number of coordinates ({len(coords)}); expected 'cls x1 y1 x2 y2 ...'")
        if len(coords) != 4 and len(coords) < 6:
            raise DatasetError(f"{path}:{n}: a polygon needs at least 3 points, got {len(coords) // 2}")
        bad = [v for v in coords if not (-0.01 <= v <= 1.01)]  # a little slack for rounding, then clipped
        if bad:
            hint = "; these look like pixel coordinates" if max(abs(v) for v in bad) > 1.5 else ""
            raise DatasetError(
                f"{path}:{n}: coordinate {bad[0]:g} is outside 0..1 (YOLO labels are normalised to the image{hint})"
            )
        out.append((int(cls), [min(max(v, 0.0), 1.0) for v in coords]))
    return out


def _relative(f: Path, root: Path) -> str:
    try:
        return f.relative_to(root).as_posix()
    except ValueError:
        return str(f.resolve())


# ---------------------------------------------------------------------------------------------------------------------
# Cityscapes and ADE20K (instance PNGs -> RLE)
# ---------------------------------------------------------------------------------------------------------------------


def _read_png(path: Path, size: tuple[int, int], what: str) -> np.ndarray:
    """An annotation PNG decoded, once its header says it has its image's `size` (height, width): a PNG of another
    size is refused before its pixels are decoded (`what` says what it should be)."""
    from PIL import Image

    h, w = size
    try:
        with Image.open(path) as im:
            if im.size != (w, h):
                raise DatasetError(f"{path}: expected {what} {h}x{w} like its image, got {im.size[1]}x{im.size[0]}")
            return np.asarray(im)
    except PIL_ERRORS as e:
        raise DatasetError(f"{path}: cannot read annotation PNG ({e})") from None


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
        ids = _read_png(f, (h, w), "a single-channel id map")
        if ids.ndim != 2 or ids.shape != (h, w):
            raise DatasetError(f"{f}: expected a single-channel {h}x{w} id map like its image, got {ids.shape}")
        for value in np.unique(ids):
            label = int(value) // 1000 if value >= 1000 else int(value)
            if label in CITYSCAPES_THINGS:
                anns.append(_rle_annotation(ids == value, len(anns) + 1, image_id, label, int(value < 1000)))
        images.append({"id": image_id, "file_name": _relative(img, root), "height": h, "width": w})
    cats = [{"id": k, "name": v} for k, v in CITYSCAPES_THINGS.items()]
    ds = from_coco(
        {"images": images, "annotations": anns, "categories": cats}, root, gt_dir, root=root, check_files=False
    )
    ds.name = f"cityscapes_{split}"
    return ds


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
        arr = _read_png(f, (h, w), "an RGB PNG (R = class, G = instance)")
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
            anns.append(_rle_annotation(mask, len(anns) + 1, image_id, cid, 0))
        images.append({"id": image_id, "file_name": _relative(img, img_dir), "height": h, "width": w})
    for kind, count in issues.items():
        note(f"{ann_dir}: {_ISSUES[kind]}: {count}")
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
