"""The embedded demo dataset: coloured shapes on textured backgrounds, written as a COCO instance dataset.

Four classes (ids 1..4): circle, square (possibly rotated, near-square aspect), triangle, five-pointed star.
Each image has 1–6 instances sized from ~16 px to ~50% of the image; later shapes occlude earlier ones, the
masks are the *visible* parts, and instances left with under `MIN_VISIBLE_AREA` visible pixels are dropped.
Shape colours are chosen far from the background and from earlier shapes so every instance is clearly visible.

Everything is deterministic in `seed`: image ``i`` of a split depends only on (seed, split, i), so changing
`num_train` does not change the first images.

    paths = ensure_synthetic_coco(Path("datasets/shapes"))   # generates once (700 images, ~5 s)

The default image size, 160 px, is the demo model's training resolution: images are drawn at the size the model
sees, so that no detail of the smallest shapes is lost to a resize (rendering at 256 px and training at 128-192 px
cost the demo about 10 mask AP at the same number of iterations; see README).
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..files import write_json
from .masks import mask_to_rle

__all__ = [
    "CATEGORY_NAMES",
    "DEFAULT_IMAGE_SIZE",
    "MIN_VISIBLE_AREA",
    "ensure_synthetic_coco",
    "generate_synthetic_coco",
    "render_sample",
]

CATEGORY_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star")
DEFAULT_IMAGE_SIZE = 160  # the demo model's training resolution (see the module docstring)
MIN_VISIBLE_AREA = 30  # instances with fewer visible pixels are dropped
MAX_OCCLUDED_FRACTION = 0.6  # a new shape may hide at most this fraction of an earlier one (keeps it learnable)
MARKER = "done"
_SPLIT_KEYS = {"train": 1, "val": 2}
_FILE_RE = re.compile(r"^\d{6}\.png$")


# ----------------------------------------------------------------------------------------------- rasterising
def _polygon_mask(xs: np.ndarray, ys: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of the pixel centres (`xs`, `ys` broadcastable grids) against `verts`."""
    inside = np.zeros(np.broadcast_shapes(xs.shape, ys.shape), dtype=bool)
    x0, y0 = verts[:, 0], verts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
        if ay == by:
            continue
        crosses = (ay > ys) != (by > ys)
        x_at = ax + (ys - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (xs < x_at)
    return inside


def _shape_vertices(kind: int, cx: float, cy: float, r: float, theta: float, aspect: float) -> np.ndarray | None:
    """Polygon vertices (K, 2) for square/triangle/star of circumradius `r`; None for the circle."""
    if kind == 0:
        return None
    if kind == 1:
        hw, hh = r * np.sqrt(aspect) / np.sqrt(2), r / np.sqrt(aspect) / np.sqrt(2)
        local = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    elif kind == 2:
        ang = theta + np.arange(3) * 2 * np.pi / 3
        return np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], axis=1)
    else:
        ang = theta + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
    c, s = np.cos(theta), np.sin(theta)
    rot = local @ np.array([[c, s], [-s, c]])
    return rot + np.array([cx, cy])


def _shape_mask(kind: int, cx: float, cy: float, r: float, theta: float, aspect: float, size: int) -> np.ndarray:
    """Full-image bool mask of one shape, evaluated only inside its bounding box."""
    mask = np.zeros((size, size), dtype=bool)
    x_lo, x_hi = max(int(np.floor(cx - r)) - 1, 0), min(int(np.ceil(cx + r)) + 2, size)
    y_lo, y_hi = max(int(np.floor(cy - r)) - 1, 0), min(int(np.ceil(cy + r)) + 2, size)
    if x_lo >= x_hi or y_lo >= y_hi:
        return mask
    xs = np.arange(x_lo, x_hi, dtype=np.float64)[None, :] + 0.5
    ys = np.arange(y_lo, y_hi, dtype=np.float64)[:, None] + 0.5
    verts = _shape_vertices(kind, cx, cy, r, theta, aspect)
    if verts is None:
        local = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    else:
        local = _polygon_mask(xs, ys, verts)
    mask[y_lo:y_hi, x_lo:x_hi] = local
    return mask


# ------------------------------------------------------------------------------------------------ appearance
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 (size, size, 3) textured background with modest contrast (noise, gradient, stripes, checks)."""
    base = rng.uniform(30, 225, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    style = int(rng.integers(4))
    amp = rng.uniform(10, 30)
    if style == 0:  # smooth noise: upsampled coarse random grid
        cells = int(rng.integers(4, 12))
        coarse = rng.uniform(-1, 1, size=(cells, cells, 1)).astype(np.float32)
        reps = -(-size // cells)
        tex = np.kron(coarse, np.ones((reps, reps, 1), np.float32))[:size, :size]
    elif style == 1:  # linear gradient
        ang = rng.uniform(0, 2 * np.pi)
        tex = (np.cos(ang) * xx + np.sin(ang) * yy)[..., None] * 2 - 1
    elif style == 2:  # stripes
        ang, freq = rng.uniform(0, np.pi), rng.uniform(4, 16)
        tex = np.sin(2 * np.pi * freq * (np.cos(ang) * xx + np.sin(ang) * yy))[..., None]
    else:  # checkerboard
        cells = int(rng.integers(4, 16))
        tex = (((xx * cells).astype(int) + (yy * cells).astype(int)) % 2 * 2 - 1)[..., None].astype(np.float32)
    tint = rng.uniform(0.5, 1.0, size=3)
    img = (base + amp * tex * tint).astype(np.float32)
    img += rng.standard_normal((size, size, 3), dtype=np.float32) * 4.0
    return img


def _pick_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    """A colour far (in RGB) from every colour in `avoid`: the best of a few random candidates."""
    cands = rng.uniform(0, 255, size=(24, 3))
    dist = np.min([np.linalg.norm(cands - a, axis=1) for a in avoid], axis=0)
    return cands[int(np.argmax(dist))]


# ------------------------------------------------------------------------------------------------- one image
def render_sample(
    seed: int, split: str, index: int, image_size: int = DEFAULT_IMAGE_SIZE
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Image `index` of `split`: (uint8 H×W×3 RGB, [(category index 0..3, visible bool mask), ...])."""
    rng = np.random.default_rng([seed, _SPLIT_KEYS.get(split, 3), index])
    size = image_size
    img = _background(rng, size)
    bg_mean = img.reshape(-1, 3).mean(0)
    colours: list[np.ndarray] = [bg_mean]
    placed: list[tuple[int, np.ndarray, np.ndarray]] = []  # (kind, full mask, visible mask)
    r_min, r_max = 8.0, max(size * 0.25, 9.0)  # circumradius: diameter ~16 px .. ~50% of image
    for _ in range(int(rng.integers(1, 7))):
        kind = int(rng.integers(len(CATEGORY_NAMES)))
        for _try in range(8):
            r = float(np.exp(rng.uniform(np.log(r_min), np.log(r_max))))
            cx, cy = rng.uniform(r * 0.5, size - r * 0.5, size=2)
            theta, aspect = rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.25)
            m = _shape_mask(kind, cx, cy, r, theta, aspect, size)
            area = int(m.sum())
            if area < MIN_VISIBLE_AREA:
                continue
            if all((v & ~m).sum() >= (1 - MAX_OCCLUDED_FRACTION) * f.sum() for _, f, v in placed):
                break
        else:
            continue
        colour = _pick_colour(rng, colours)
        colours.append(colour)
        noise = rng.standard_normal((area, 3), dtype=np.float32) * rng.uniform(3.0, 9.0)
        img[m] = colour + noise
        placed = [(k, f, v & ~m) for k, f, v in placed] + [(kind, m, m)]
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out, [(k, v) for k, _, v in placed if int(v.sum()) >= MIN_VISIBLE_AREA]


def _annotation(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_to_rle(mask)
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
    return {"segmentation": rle, "area": float(mask.sum()), "bbox": bbox, "iscrowd": 0}


def _write_split(root: Path, split: str, count: int, image_size: int, seed: int) -> Path:
    img_dir = root / split
    img_dir.mkdir(parents=True, exist_ok=True)
    keep = {f"{i:06d}.png" for i in range(count)}
    for stale in img_dir.iterdir():  # leftovers of an earlier, larger generation
        if _FILE_RE.match(stale.name) and stale.name not in keep:
            stale.unlink()
    images: list[dict] = []
    annotations: list[dict] = []
    for i in range(count):
        pixels, instances = render_sample(seed, split, i, image_size)
        name = f"{i:06d}.png"
        Image.fromarray(pixels).save(img_dir / name, compress_level=1)
        images.append({"id": i + 1, "file_name": name, "height": image_size, "width": image_size})
        for kind, mask in instances:
            ann = _annotation(mask)
            ann.update(id=len(annotations) + 1, image_id=i + 1, category_id=kind + 1)
            annotations.append(ann)
    coco = {
        "info": {"description": f"fastinst synthetic shapes ({split})", "version": "1", "seed": seed},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORY_NAMES)],
    }
    ann_path = root / "annotations" / f"instances_{split}.json"
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(ann_path, coco)


def _paths(root: Path) -> dict[str, Any]:
    return {
        "root": root,
        "train_images": root / "train",
        "val_images": root / "val",
        "train_json": root / "annotations" / "instances_train.json",
        "val_json": root / "annotations" / "instances_val.json",
        "names": list(CATEGORY_NAMES),
    }


def generate_synthetic_coco(
    root: Path, num_train: int = 400, num_val: int = 300, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0
) -> dict[str, Any]:
    """Write the shapes dataset under `root` (``train/``, ``val/``, ``annotations/instances_{split}.json``) and
    the ``done`` marker last. Returns ``{"root", "train_images", "val_images", "train_json", "val_json"}`` paths
    plus ``"names"`` (class names in category-id order)."""
    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / MARKER
    marker.unlink(missing_ok=True)
    _write_split(root, "train", num_train, image_size, seed)
    _write_split(root, "val", num_val, image_size, seed)
    params = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed}
    marker.write_text(json.dumps(params) + "\n")
    return _paths(root)


def ensure_synthetic_coco(root: Path, **kwargs: Any) -> dict[str, Any]:
    """`generate_synthetic_coco(root, **kwargs)` unless a complete generation with the same parameters is
    already there (its ``done`` marker is written last, so an interrupted run is regenerated)."""
    root = Path(root)
    params = {
        name: p.default for name, p in inspect.signature(generate_synthetic_coco).parameters.items() if name != "root"
    }
    unknown = set(kwargs) - set(params)
    if unknown:
        raise TypeError(f"unexpected arguments: {sorted(unknown)}")
    params.update(kwargs)
    try:
        done = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        done = None
    if done == params and all(
        p.exists() for p in (root / "annotations" / "instances_train.json", root / "annotations" / "instances_val.json")
    ):
        return _paths(root)
    return generate_synthetic_coco(root, **params)
