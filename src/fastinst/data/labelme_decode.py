"""What a labelme file holds, decoded (the rules: `fastinst.data.labelme`'s docstring): the image it names or embeds
(`find_image`: the file, or the `imageData` bytes with the cache they are kept in, `embedded_cache_dir`) and its
shapes as instances (`shape_instances`: polygons, rectangles, circles and `mask` PNGs -> polygons or RLE, grouped by
`group_id`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from collections import Counter
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from ..errors import DatasetError
from ..files import atomic_path
from .core import image_size, is_file, is_int, is_number, shown
from .images import IMAGE_EXTENSIONS, PIL_ERRORS
from .masks import clip_polygon, json_rle, mask_to_rle, merge_rles

IGNORE = "__ignore__"
BACKGROUND = "_background_"
POLYGON_TYPES = ("polygon", "rectangle", "circle")
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}  # how these files begin
_FORMAT_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif"}  # PIL format -> file extension, when not its name


# ---------------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------------


def find_image(path: Path, data: dict, target_dir: Path | None, used: set[str]) -> tuple[Path, tuple[int, int], bool]:
    """-> (image path, (height, width), whether it is embedded data still to write), checking the stated size.

    The first candidate file that reads as an image wins; when none does (missing, not an image, or `imagePath`
    naming the json itself, as in labelme's own tutorial file) the embedded `imageData` is the image, as in labelme:
    its path is `target_dir/<name>` (to write later), or without `target_dir` the cached copy (written now)."""
    stated = data.get("imagePath")
    if stated is not None and not isinstance(stated, str):
        raise DatasetError(f"{path}: 'imagePath' must be a file name (a string), got {shown(stated)}")
    stated = stated or ""
    here = path.parent
    candidates = []
    if stated:
        candidates += [here / stated, here / stated.replace("\\", "/"), here / PureWindowsPath(stated).name]
    candidates += [here / f"{path.stem}{ext}" for ext in sorted(IMAGE_EXTENSIONS)]
    wanted = here / stated if stated else here / f"{path.stem}.<image>"
    found, size, unreadable = None, (0, 0), None
    for c in candidates:
        if not is_file(c):
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
        raw = decode_b64(data["imageData"], path, "imageData")
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


def _checked_size(path: Path, data: dict, size: tuple[int, int], image: Path | None) -> tuple[int, int]:
    """`size` (height, width) of the image file `image` (None: the one embedded in the json), once it is checked
    against the json's `imageHeight`/`imageWidth` (positive integers or null)."""
    h, w = size
    sh, sw = data.get("imageHeight"), data.get("imageWidth")
    for key, value in (("imageHeight", sh), ("imageWidth", sw)):
        if value is not None and not (is_int(value) and value > 0):
            raise DatasetError(f"{path}: '{key}' must be a positive integer (or null), got {shown(value)}")
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


def decode_b64(value: Any, path: Path, key: str) -> bytes:
    """The bytes of the base64 string `value` (`key`: what it is in `path`, named in the error)."""
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


def shape_instances(path: Path, shapes: list, h: int, w: int, issues: Counter) -> list[tuple[str, list | dict]]:
    """-> [(label, segmentation)] in order of first appearance: polygons (flat xy lists, inside the image) or an RLE
    dict. Mask shapes are kept as RLE as they are read, so a file with many of them holds one full-size mask at a
    time."""
    groups: dict[Any, tuple[str, list]] = {}
    for i, s in enumerate(shapes):
        label = shape_label(path, i, s)
        if label == BACKGROUND:
            issues["background"] += 1
            continue
        group = s.get("group_id")
        if group is not None and not (is_int(group) or isinstance(group, str)):
            raise DatasetError(f"{path}: shapes[{i}] 'group_id' must be an integer or null, got {shown(group)}")
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
        out.append((label, merge_rles(bitmaps, h, w)))
    return out


def shape_label(path: Path, i: int, s: Any) -> str:
    """The label of shape `i`; `DatasetError` when the shape is not an object with a non-empty string label."""
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
        raise DatasetError(f"{path}: shapes[{i}] 'shape_type' must be a string, got {shown(kind)}")
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
    poly = clip_polygon(poly, h, w, issues)
    if _flat(poly):
        issues["empty"] += 1
        return None
    return poly


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

    what = f"shapes[{i}] (label {shown(s.get('label'))}) mask"
    raw = decode_b64(s.get("mask"), path, what)
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
