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

import base64
import binascii
import hashlib
import io
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from ..errors import DatasetError, note
from ..files import atomic_path
from .datasets import (
    InstanceDataset,
    _relative,
    _shown,
    from_coco,
    image_size,
    is_int,
    is_number,
    json_rle,
    mask_to_rle,
    read_json,
)
from .images import IMAGE_EXTENSIONS, PIL_ERRORS

__all__ = [
    "EmbeddedImage",
    "embedded_cache_dir",
    "find_labelme",
    "is_labelme",
    "load_labelme",
    "read_labelme",
    "write_embedded_images",
]

IGNORE = "__ignore__"
BACKGROUND = "_background_"
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "validation"), "test": ("test", "testing")}
POLYGON_TYPES = ("polygon", "rectangle", "circle")
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}  # how these files begin
_FORMAT_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif"}  # PIL format -> file extension, when not its name

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
        image, (h, w), embedded = _image(path, data, target_dir, used_names)
        if embedded:
            pending.append(EmbeddedImage(path, image))
        images.append({"id": image_id, "file_name": _relative(image, root), "height": h, "width": w})
        for label, seg in _instances(path, data["shapes"], h, w, issues):
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
        raw = _decode_b64(data.get("imageData"), item.json_path, "imageData")
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
            labels.add(_label(path, i, s))
    labels.discard(IGNORE)
    labels.discard(BACKGROUND)
    return labels


# ---------------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------------


def _image(path: Path, data: dict, target_dir: Path | None, used: set[str]) -> tuple[Path, tuple[int, int], bool]:
    """-> (image path, (height, width), whether it is embedded data still to write), checking the stated size.

    The first candidate file that reads as an image wins; when none does (missing, not an image, or `imagePath`
    naming the json itself, as in labelme's own tutorial file) the embedded `imageData` is the image, as in labelme:
    its path is `target_dir/<name>` (to write later), or without `target_dir` the cached copy (written now)."""
    stated = data.get("imagePath")
    if stated is not None and not isinstance(stated, str):
        raise DatasetError(f"{path}: 'imagePath' must be a file name (a string), got {_shown(stated)}")
    stated = stated or ""
    here = path.parent
    candidates = []
    if stated:
        candidates += [here / stated, here / stated.replace("\\", "/"), here / PureWindowsPath(stated).name]
    candidates += [here / f"{path.stem}{ext}" for ext in sorted(IMAGE_EXTENSIONS)]
    wanted = here / stated if stated else here / f"{path.stem}.<image>"
    found, size, unreadable = None, (0, 0), None
    for c in candidates:
        if not _is_file(c):
            continue
        if c.resolve() == path.resolve():
            unreadable = unreadable or f"image {c} is the labelme file itself"
            continue
        try:
            size = image_size(c)
        except DatasetError:
            unreadable = unreadable or f"image {c} is not a readable image"
            continue
        found = c
        break
    why = unreadable or f"image {wanted} not found"
    if found is not None:
        embedded = False
        image = found
    elif data.get("imageData"):
        raw = _decode_b64(data["imageData"], path, "imageData")
        size, fmt = _bytes_size(raw, path)
        name = PureWindowsPath(stated).name if stated else ""
        if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:  # none, or not an image's (the json itself)
            name = f"{Path(name).stem or path.stem}.{_FORMAT_EXTENSIONS.get(fmt, fmt.lower())}"
        if target_dir is None:
            size = _checked_size(path, data, size, None)  # before anything is written
            return _cached(path, raw, name), size, False
        if name in used:
            name = f"{path.stem}_{name}"
        k = 1
        base = name
        while name in used:
            name = f"{Path(base).stem}_{k}{Path(base).suffix}"
            k += 1
        used.add(name)
        image = target_dir / name
        embedded = True
    else:
        raise DatasetError(f"{path}: {why} (and the file embeds no imageData)")
    return image, _checked_size(path, data, size, None if embedded else image), embedded


def _is_file(p: Path) -> bool:
    """`p.is_file()`, False also for a name the system refuses (too long, a NUL byte)."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def _checked_size(path: Path, data: dict, size: tuple[int, int], image: Path | None) -> tuple[int, int]:
    """`size` (height, width) of the image file `image` (None: the one embedded in the json), once it is checked
    against the json's `imageHeight`/`imageWidth` (positive integers or null)."""
    h, w = size
    sh, sw = data.get("imageHeight"), data.get("imageWidth")
    for key, value in (("imageHeight", sh), ("imageWidth", sw)):
        if value is not None and not (is_int(value) and value > 0):
            raise DatasetError(f"{path}: '{key}' must be a positive integer (or null), got {_shown(value)}")
    if (sh is not None and sh != h) or (sw is not None and sw != w):
        raise DatasetError(
            f"{path}: imageHeight/imageWidth say {sw}x{sh} (width x height) but the image "
            f"{'embedded in it' if image is None else image} is {w}x{h}"
        )
    return size


def embedded_cache_dir() -> Path:
    """Where `load_labelme` keeps the images labelme files only embed: `labelme/` in the fastinst cache folder
    (`$FASTINST_CACHE`, or `~/.cache/fastinst`; the folder `fastinst.hub` downloads weights to)."""
    from ..files import cache_dir

    return cache_dir() / "labelme"


def _cached(path: Path, raw: bytes, name: str) -> Path:
    """The cached copy of the image `raw` embedded in the labelme file `path`: `embedded_cache_dir()/<sha256 of the
    bytes, 16 hex>/<name>`, written (atomically, the bytes as they are) unless a file there already holds them."""
    folder = embedded_cache_dir() / hashlib.sha256(raw).hexdigest()[:16]
    target = folder / name
    try:
        if target.is_file() and target.stat().st_size == len(raw) and target.read_bytes() == raw:
            return target
    except OSError:
        pass  # unreadable: written again below
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_bytes(raw)
    except OSError as e:
        reason = (e.strerror or str(e)).lower()
        raise DatasetError(
            f"{path}: cannot write the image embedded in it (imageData) to the cache folder {folder}: {reason} (set "
            f"FASTINST_CACHE to a writable folder, or `fastinst convert --data {path.parent} --output OUT.json` "
            "writes it next to OUT.json)"
        ) from None
    return target


def _decode_b64(value: Any, path: Path, key: str) -> bytes:
    if not isinstance(value, str):
        raise DatasetError(f"{path}: {key} is not a base64 string")
    try:
        return base64.b64decode(value)
    except (binascii.Error, ValueError) as e:
        raise DatasetError(f"{path}: {key} is not valid base64 ({e})") from None


def _bytes_size(raw: bytes, path: Path) -> tuple[tuple[int, int], str]:
    """((height, width) with EXIF rotation applied, PIL format name) of an encoded image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
            fmt = im.format or "png"
    except PIL_ERRORS as e:
        raise DatasetError(f"{path}: imageData cannot be decoded: {_undecodable(raw, e)}") from None
    return ((w, h) if orientation in (5, 6, 7, 8) else (h, w)), fmt


def _undecodable(raw: bytes, e: BaseException, kind: str = "an image") -> str:
    """Why Pillow could not decode `raw` (expected to be `kind`), in words: its own message names an in-memory file
    object (`<_io.BytesIO object at 0x...>`), which tells the user nothing."""
    from PIL import UnidentifiedImageError

    if not raw:
        return "the base64 text decodes to no bytes"
    if isinstance(e, UnidentifiedImageError):
        start = next((name for magic, name in _MAGIC.items() if raw.startswith(magic)), None)
        if start is not None:
            return f"its {len(raw)} bytes start as a {start} but are truncated or damaged"
        return f"its {len(raw)} bytes are not {kind} Pillow can read"
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return f"the image data is broken ({text})" if "_io.BytesIO" not in text else "the image data is broken"


# ---------------------------------------------------------------------------------------------------------------------
# Shapes -> instances
# ---------------------------------------------------------------------------------------------------------------------


def _instances(path: Path, shapes: list, h: int, w: int, issues: Counter) -> list[tuple[str, list | dict]]:
    """-> [(label, segmentation)] in order of first appearance: polygons (flat xy lists, inside the image) or an RLE
    dict. Mask shapes are kept as RLE as they are read, so a file with many of them holds one full-size mask at a
    time."""
    groups: dict[Any, tuple[str, list]] = {}
    for i, s in enumerate(shapes):
        label = _label(path, i, s)
        if label == BACKGROUND:
            issues["background"] += 1
            continue
        group = s.get("group_id")
        if group is not None and not (is_int(group) or isinstance(group, str)):
            raise DatasetError(f"{path}: shapes[{i}] 'group_id' must be an integer or null, got {_shown(group)}")
        part = _part(path, i, s, h, w, issues)
        if part is None:
            continue
        key = (label, group) if group is not None else ("#", i)
        groups.setdefault(key, (label, []))[1].append(part)
    out: list[tuple[str, list | dict]] = []
    for label, parts in groups.values():
        polygons = [p for p in parts if isinstance(p, list)]
        bitmaps = [p for p in parts if isinstance(p, dict)]
        if not bitmaps:
            out.append((label, polygons))
            continue
        if polygons:
            bitmaps.append(json_rle(polygons, h, w))
        merged = mask_util.merge(bitmaps) if len(bitmaps) > 1 else bitmaps[0]
        counts = merged["counts"]
        out.append((label, {"size": [h, w], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}))
    return out


def _label(path: Path, i: int, s: Any) -> str:
    if not isinstance(s, dict):
        raise DatasetError(f"{path}: shapes[{i}] is not an object")
    label = s.get("label")
    if not isinstance(label, str) or not label:
        raise DatasetError(f"{path}: shapes[{i}] has no label")
    return label


def _part(path: Path, i: int, s: dict, h: int, w: int, issues: Counter) -> list | dict | None:
    """One shape as a flat polygon (clipped to the image) or a full-size RLE; None (counted) when it is skipped."""
    kind = s.get("shape_type")
    if kind is not None and not isinstance(kind, str):
        raise DatasetError(f"{path}: shapes[{i}] 'shape_type' must be a string, got {_shown(kind)}")
    kind = kind or "polygon"
    if kind not in (*POLYGON_TYPES, "mask"):
        issues["unsupported"] += 1
        return None
    points = _points(path, i, s.get("points"))
    if kind == "polygon":
        if len(points) < 3:
            issues["short_polygon"] += 1
            return None
        poly = [v for xy in points for v in xy]
    elif len(points) != 2:
        issues["bad_points"] += 1
        return None
    elif kind == "rectangle":
        (x0, y0), (x1, y1) = points
        x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        poly = [x0, y0, x1, y0, x1, y1, x0, y1]
    elif kind == "circle":
        (cx, cy), (px, py) = points
        r = math.hypot(px - cx, py - cy)
        if not math.isfinite(r):
            raise DatasetError(f"{path}: shapes[{i}] circle's radius is not a finite number")
        rim = 2 * math.pi * r
        n = 1440 if rim >= 1440 else max(16, math.ceil(rim))  # neighbouring vertices ~1 px apart, at most 1440
        angles = np.arange(n) * (2 * math.pi / n)
        poly = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).ravel().tolist()
    else:
        return _mask_part(path, i, s, points, h, w, issues)
    poly = _clipped(poly, h, w, issues)
    if _flat(poly):
        issues["empty"] += 1
        return None
    return poly


def _clipped(poly: list[float], h: int, w: int, issues: Counter) -> list[float]:
    """The polygon with its coordinates clipped to the image (as `from_coco` clips COCO's): a vertex far outside
    never sizes what rasterising the polygon allocates."""
    xs, ys = poly[0::2], poly[1::2]
    if min(xs) >= 0 and min(ys) >= 0 and max(xs) <= w and max(ys) <= h:
        return poly
    issues["clipped"] += 1
    arr = np.asarray(poly, dtype=np.float64)
    arr[0::2], arr[1::2] = np.clip(arr[0::2], 0, w), np.clip(arr[1::2], 0, h)
    return arr.tolist()


def _points(path: Path, i: int, points: Any) -> list[tuple[float, float]]:
    ok = isinstance(points, list) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(is_number(v) for v in p) for p in points
    )
    if not ok:
        raise DatasetError(f"{path}: shapes[{i}] 'points' is not a list of [x, y] number pairs")
    return [(float(x), float(y)) for x, y in points]


def _flat(poly: list[float]) -> bool:
    """Whether all the points share one x or one y (no area; a crossing polygon's cancelling area does not count)."""
    xs, ys = poly[0::2], poly[1::2]
    return min(xs) == max(xs) or min(ys) == max(ys)


def _mask_part(
    path: Path, i: int, s: dict, points: list[tuple[float, float]], h: int, w: int, issues: Counter
) -> dict | None:
    """A `mask` shape as a full-size compressed RLE. The PNG's size is checked against the image from its header,
    before it is decoded: a mask is a box of the image, never larger."""
    from PIL import Image

    what = f"shapes[{i}] (label {_shown(s.get('label'))}) mask"
    raw = _decode_b64(s.get("mask"), path, what)
    try:
        with Image.open(io.BytesIO(raw)) as im:
            mw, mh = im.size
            if mw > w or mh > h:
                raise DatasetError(f"{path}: {what} is {mw}x{mh} pixels, larger than its {w}x{h} image")
            small = np.asarray(im.convert("L")) > 0
    except PIL_ERRORS as e:
        raise DatasetError(f"{path}: {what} cannot be decoded: {_undecodable(raw, e, 'a PNG')}") from None
    x0 = max(int(min(points[0][0], points[1][0])), 0)
    y0 = max(int(min(points[0][1], points[1][1])), 0)
    if x0 >= w or y0 >= h:
        issues["empty"] += 1
        return None
    mask = np.zeros((h, w), bool)
    part = small[: h - y0, : w - x0]
    mask[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]] = part
    if not mask.any():
        issues["empty"] += 1
        return None
    return mask_to_rle(mask)


def _annotation(ann_id: int, image_id: int, category_id: int, seg: list | dict, iscrowd: int) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": seg, "iscrowd": iscrowd}
