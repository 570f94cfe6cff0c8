"""labelme annotation folders (labelme 5.x per-image JSON files) as one COCO-shaped `InstanceDataset`.

A labelme file holds `version, flags, shapes, imagePath, imageData, imageHeight, imageWidth`; each shape `label,
points, group_id, shape_type, flags, description` (and `mask` for `shape_type: "mask"`). The rules (docs/datasets.md,
"labelme"):

* Shapes: `polygon` (also a missing `shape_type`), `rectangle` (two corners), `circle` (centre and a point on the
  rim, stored as a polygon whose vertices are at most ~1 px apart) and `mask` (a base64 PNG whose top-left pixel is
  the box's first corner, as labelme pastes it: `mask[y1:y2+1, x1:x2+1]`) give instance masks. `line`, `linestrip`,
  `point`, `points` and unknown types are skipped, as are polygons under 3 points; each kind is counted in one note.
* Shapes sharing `(label, group_id)` with a non-null `group_id` are one instance of several parts; polygons-only
  instances stay polygons (COCO's rasterisation), any `mask` part makes the instance an RLE.
* `__ignore__` shapes are crowd regions (`iscrowd=1`), one per category with instances in the split so that COCO
  evaluation ignores detections of those classes there (a class with no instance gets none, so ignore regions never
  make a class look used); training drops crowd regions. `_background_` shapes are skipped. Neither becomes a
  category.
* Categories (ids 1..K): the order of `labels.txt` (labelme's convention: one name a line, `__ignore__` and
  `_background_` first) in the folder or its parent, else the sorted label names of every file in the folder (all
  splits, so that every split has the same classes). A label missing from `labels.txt` is a `DatasetError`.
* Images: `imagePath` relative to the json (also with Windows separators, or the bare file name next to the json, or
  `<json stem>.<image extension>`); the first that reads as an image is used. When none does (missing, not an image,
  or `imagePath` naming the json itself, as labelme's tutorial file does) but `imageData` is embedded, the embedded
  image is the one (as labelme opens it): `read_labelme(..., embedded_dir=)` decodes it into that folder (what
  `fastinst convert` does); `load_labelme` (and `read_labelme` without `embedded_dir`) decodes it once into the
  per-user cache, `embedded_cache_dir()/<sha256 of the bytes, 16 hex>/<name>` (unchanged bytes, written atomically,
  reused while its bytes are the same), so that every record names an image file; the data folder is never written.
  `imageHeight`/`imageWidth` must match the image.
* Splits: `train/`, `val/`, `test/` (or `training/`, `validation/`, `testing/`) sub-folders holding json files are the
  splits; a folder without them is one split used whatever `split` is asked (one note says so).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DatasetError, note
from ..files import atomic_path
from .coco import from_coco
from .core import InstanceDataset, relative
from .jsonfiles import read_json
from .labelme_decode import BACKGROUND, IGNORE, decode_b64, embedded_cache_dir, find_image, shape_instances, shape_label
from .masks import json_rle

__all__ = [
    "EmbeddedImage",
    "embedded_cache_dir",
    "find_labelme",
    "is_labelme",
    "load_labelme",
    "read_labelme",
    "write_embedded_images",
]

SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "validation"), "test": ("test", "testing")}

_ISSUES = {
    "not_labelme": "skipped json files that are not labelme annotations (no 'shapes' list)",
    "short_polygon": "skipped polygons with fewer than 3 points",
    "bad_points": "skipped rectangles/circles/masks without exactly 2 points",
    "unsupported": "skipped shapes that are not areas (line, linestrip, point, ...)",
    "background": "skipped _background_ shapes",
    "empty": "skipped shapes covering no area",
    "clipped": "clipped shapes reaching outside their image",
}


@dataclass(frozen=True)
class EmbeddedImage:
    """An image that exists only as a labelme file's `imageData`: `write_embedded_images` writes it to `target`."""

    json_path: Path
    target: Path


# ---------------------------------------------------------------------------------------------------------------------
# Finding labelme files and splits
# ---------------------------------------------------------------------------------------------------------------------


def is_labelme(path: Path) -> bool:
    """Whether `path` is a readable json object with a `shapes` list (a labelme file)."""
    try:
        data = read_json(path)
    except DatasetError:
        return False
    return isinstance(data, dict) and isinstance(data.get("shapes"), list)


def _split_folders(folder: Path) -> dict[str, Path]:
    """{split name: sub-folder} for the split sub-folders of `folder` that hold json files."""
    out = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            sub = folder / name
            if sub.is_dir() and any(sub.rglob("*.json")):
                out[split] = sub
                break
    return out


def find_labelme(folder: Path, limit: int = 20) -> bool:
    """Whether `folder` (or one of its split sub-folders) is a labelme folder: one of its first `limit` json files
    (in name order) is a labelme file. Used by `detect_layout`."""
    places = [*_split_folders(folder).values(), folder]
    for place in places:
        for n, path in enumerate(sorted(place.rglob("*.json") if place is not folder else place.glob("*.json"))):
            if n >= limit:
                break
            if is_labelme(path):
                return True
    return False


def _json_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.json") if p.is_file())


def _labels_txt(root: Path) -> Path | None:
    for place in (root, root.parent):
        if (place / "labels.txt").is_file():
            return place / "labels.txt"
    return None


def _read_labels_txt(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None
    names: list[str] = []
    for n, line in enumerate(lines, 1):
        name = line.strip()
        if not name or name in (IGNORE, BACKGROUND):
            continue
        if name in names:
            raise DatasetError(f"{path}:{n}: label {name!r} is listed twice")
        names.append(name)
    if not names:
        raise DatasetError(f"{path}: lists no labels besides {IGNORE} and {BACKGROUND}")
    return names


# ---------------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------------


def load_labelme(source: str | os.PathLike | Iterable[str | os.PathLike], split: str = "val") -> InstanceDataset:
    """Split `split` of a labelme folder (or the given labelme json files) as an `InstanceDataset` (see the module
    docstring for the rules); an image only embedded as `imageData` is decoded into the per-user cache
    (`embedded_cache_dir`) so that its record names a file. Raises `DatasetError` naming the file and the problem."""
    dataset, _ = read_labelme(source, split)
    return dataset


def read_labelme(
    source: str | os.PathLike | Iterable[str | os.PathLike],
    split: str = "val",
    *,
    embedded_dir: str | os.PathLike | None = None,
) -> tuple[InstanceDataset, list[EmbeddedImage]]:
    """`load_labelme`, except that with `embedded_dir` an image found only as embedded `imageData` is given the path
    `embedded_dir/<its file name>` (renamed `<json stem>_<name>` when two files share a name) instead of going to
    the cache; -> (the dataset, the embedded images still to write with `write_embedded_images`). With `embedded_dir`
    nothing is written here; without it (what `load_labelme` does) the list is empty and embedded images are in the
    per-user cache (`embedded_cache_dir`), the only place written."""
    files, root, label_files = _select(source, split)
    listed = _labels_txt(root)
    if listed is not None:
        names = _read_labels_txt(listed)
    else:
        names = sorted(_scan_labels(label_files))
        if not names:
            raise DatasetError(f"{root}: the labelme files hold no labels (only {IGNORE}/{BACKGROUND} or no shapes)")
    category = {n: i for i, n in enumerate(names, 1)}
    issues: Counter[str] = Counter()
    images: list[dict] = []
    anns: list[dict] = []
    pending: list[EmbeddedImage] = []
    used_names: set[str] = set()
    target_dir = Path(embedded_dir) if embedded_dir is not None else None
    ignored: list[tuple[int, dict]] = []  # (image id, RLE) of each __ignore__ region
    for path in files:
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            issues["not_labelme"] += 1
            continue
        image_id = len(images) + 1
        image, (h, w), embedded = find_image(path, data, target_dir, used_names)
        if embedded:
            pending.append(EmbeddedImage(path, image))
        images.append({"id": image_id, "file_name": relative(image, root), "height": h, "width": w})
        for label, seg in shape_instances(path, data["shapes"], h, w, issues):
            if label == IGNORE:
                ignored.append((image_id, json_rle(seg, h, w)))
                continue
            if label not in category:
                where = f"in {listed}" if listed is not None else "among the labels"
                raise DatasetError(f"{path}: label {label!r} is not listed {where}")
            anns.append(_annotation(len(anns) + 1, image_id, category[label], seg, 0))
    if not images:
        raise DatasetError(f"{root}: no labelme json files (with a 'shapes' list) for split {split!r}")
    # A crowd copy per class that has instances in the split: enough for COCO evaluation to ignore detections of
    # those classes there, without making the classes nothing was drawn of look used.
    with_instances = sorted({a["category_id"] for a in anns})
    for image_id, rle in ignored:
        for cid in with_instances:
            anns.append(_annotation(len(anns) + 1, image_id, cid, rle, 1))
    for kind, count in issues.items():
        note(f"{root}: {_ISSUES[kind]}: {count}")
    cats = [{"id": i, "name": n} for n, i in category.items()]
    ds = from_coco(
        {"images": images, "annotations": anns, "categories": cats}, root, root, root=root, check_files=False
    )
    ds.name = f"{root.name}_{split}"
    return ds, pending


def write_embedded_images(pending: Iterable[EmbeddedImage]) -> list[Path]:
    """Decode each pending image's `imageData` (re-read from its json) and write the bytes as they are to its target
    (atomically; the folder is created). -> the written paths."""
    out = []
    for item in pending:
        data = read_json(item.json_path)
        raw = decode_b64(data.get("imageData"), item.json_path, "imageData")
        item.target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(item.target) as tmp:
            tmp.write_bytes(raw)
        out.append(item.target)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Files of a split
# ---------------------------------------------------------------------------------------------------------------------


def _select(source: Any, split: str) -> tuple[list[Path], Path, list[Path]]:
    """-> (json files of the split, the dataset root, every json file whose labels count for the category list)."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        root = Path(source)
        splits = _split_folders(root)
        if not splits:
            files = _json_files(root)
            note(
                f"{root}: a flat labelme folder (no train/ or val/ sub-folders): its files are one split, used for "
                f"split {split!r}"
            )
            return files, root, files
        if split not in splits:
            have = ", ".join(f"{k} ({v.name}/)" for k, v in splits.items())
            raise DatasetError(f"{root}: no labelme sub-folder for split {split!r} (found: {have})")
        every = [f for sub in splits.values() for f in _json_files(sub)]
        return _json_files(splits[split]), root, every
    paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    if not paths:
        raise DatasetError("no labelme json files given")
    for p in paths:
        if not p.is_file():
            raise DatasetError(f"{p}: labelme file not found")
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return sorted(paths), root, paths


def _scan_labels(files: list[Path]) -> set[str]:
    labels = set()
    for path in files:
        data = read_json(path)
        shapes = data.get("shapes") if isinstance(data, dict) else None
        if not isinstance(shapes, list):
            continue
        for i, s in enumerate(shapes):
            labels.add(shape_label(path, i, s))
    labels.discard(IGNORE)
    labels.discard(BACKGROUND)
    return labels


def _annotation(ann_id: int, image_id: int, category_id: int, seg: list | dict, iscrowd: int) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": seg, "iscrowd": iscrowd}
