"""What every dataset reader shares: the records type `InstanceDataset` (see docs/DEVELOPING.md), the checks a split
gets before training (`has_instance`, `drop_unused_categories`, `unusable_for_training`), the value checks of the
readers (`is_int`, `is_number`, `shown` for a bad value in a one-line message), the image-size rules and the few
file-system helpers the readers have in common. Imports no reader.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from ..errors import DatasetError, shown
from .images import DEFAULT_MAX_PIXELS, PIL_ERRORS

# What loading skipped or fixed, by kind: one note per kind with its count (`from_coco`, the ADE20K reader).
ISSUES = {
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
    # what loading skipped or fixed, by kind (keys of `ISSUES`, plus "no_annotations_key"): used to explain an
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
# Value checks
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Files and image sizes
# ---------------------------------------------------------------------------------------------------------------------


def relative(f: Path, root: Path) -> str:
    """`f` as a POSIX path relative to `root` (a COCO `file_name`), or absolute when it is not under `root`."""
    try:
        return f.relative_to(root).as_posix()
    except ValueError:
        return str(f.resolve())


def is_dir(p: Path) -> bool:
    """`p.is_dir()`, False also for a name the system refuses (too long, a NUL byte)."""
    try:
        return p.is_dir()
    except (OSError, ValueError):
        return False


def is_file(p: Path) -> bool:
    """`p.is_file()`, False also for a name the system refuses (too long, a NUL byte)."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


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


def read_annotation_png(path: Path, size: tuple[int, int], what: str) -> np.ndarray:
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


def check_image_entry_size(h: Any, w: Any, where: str) -> tuple[int, int]:
    """(h, w) when both are positive integers whose product stays within the pixels `read_image` decodes
    (`DEFAULT_MAX_PIXELS`); else `DatasetError` naming `where`. Masks are allocated from these sizes, so a size no
    image can have is refused before anything is."""
    if not (is_int(h) and is_int(w) and h > 0 and w > 0):
        raise DatasetError(f"{where}: 'height' and 'width' must be positive integers, got {shown(h)} x {shown(w)}")
    if h * w > DEFAULT_MAX_PIXELS:
        raise DatasetError(
            f"{where}: {w}x{h} is {h * w / 1e6:.3g} megapixels, more than the {DEFAULT_MAX_PIXELS / 1e6:.0f} "
            "megapixels images are read with"
        )
    return h, w


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
