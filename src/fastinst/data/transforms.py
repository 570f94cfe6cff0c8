"""Training augmentation (SPEC §4.2) and test-time resize, applied to an image and its instance masks together.

`train_transform(image, annotations, cfg, rng)` follows the official `FastInstInstanceDatasetMapper`:

* with probability 0.5 (only when `cfg.crop_enabled`) the DETR-style crop path
  ``ResizeShortestEdge(choice(crop_resize_sizes), no max) -> RandomCrop(absolute_range) ->
  ResizeShortestEdge(choice(min_size_train), max_size_train) -> horizontal flip (p=0.5)``;
* otherwise ``ResizeShortestEdge(choice(min_size_train), max_size_train) -> horizontal flip (p=0.5)``.

Every random draw comes from the `np.random.Generator` passed in, in a fixed order (path [only if crop is enabled],
crop-resize size, crop height, crop width, crop top, crop left, resize size, flip), so a sample is a pure function
of its generator's seed.

Images are resized with PIL bilinear on uint8 (`fastinst.model.preprocess.resize_image`), target sizes follow
`resize_shape` (``int(v + 0.5)`` rounding). Masks:

* polygons are moved as coordinates through the whole chain (scale, crop offset, scale, ``x -> W - x``) and rasterised
  once with pycocotools (``frPyObjects -> merge -> decode``) on the final canvas. The crop box maps exactly onto that
  canvas, and pycocotools clips polygons to the canvas while rasterising, so this stands in for the official shapely
  clip against the crop box; the two can differ only by the sub-pixel rounding of boundary vertices (an occasional
  pixel on the crop border). Rasterising at the final size (not resizing a bitmap) is what the official code does.
* RLE masks are decoded at the record's size, then resized (PIL nearest), cropped, resized and flipped as bitmaps.

Crowd annotations are dropped; an instance cropped away completely is kept with an all-zero mask (no filtering).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util

from ..config import InputConfig
from .images import resize_image, resize_shape

__all__ = [
    "Plan",
    "apply_bitmap",
    "apply_image",
    "apply_polygon",
    "polygons_to_mask",
    "rle_to_mask",
    "sample_plan",
    "to_tensor_image",
    "train_transform",
]

NO_MAX = 1 << 62  # "no max size" for ResizeShortestEdge


@dataclass(frozen=True)
class Plan:
    """The geometric steps drawn for one sample (sizes are (h, w); `crop` is (top, left, height, width))."""

    input_size: tuple[int, int]
    pre_crop_size: tuple[int, int] | None  # crop path: size after the first resize
    crop: tuple[int, int, int, int] | None
    output_size: tuple[int, int]
    flip: bool


def _choice(rng: np.random.Generator, values: Sequence[int]) -> int:
    return int(values[int(rng.integers(len(values)))])


def sample_plan(h: int, w: int, cfg: InputConfig, rng: np.random.Generator) -> Plan:
    """Draw the augmentation for an (h, w) image; every random number comes from `rng`."""
    h0, w0 = h, w
    crop = pre = None
    use_crop = cfg.crop_enabled and not rng.random() > 0.5  # official: `if rand() > 0.5: no crop`
    if use_crop:
        pre = resize_shape(h, w, _choice(rng, cfg.crop_resize_sizes), NO_MAX)
        ph, pw = pre
        lo, hi = cfg.crop_size
        ch = int(rng.integers(min(ph, lo), min(ph, hi) + 1))
        cw = int(rng.integers(min(pw, lo), min(pw, hi) + 1))
        top = int(rng.integers(ph - ch + 1))
        left = int(rng.integers(pw - cw + 1))
        crop = (top, left, ch, cw)
        h, w = ch, cw
    out = resize_shape(h, w, _choice(rng, cfg.min_size_train), cfg.max_size_train)
    flip = bool(cfg.random_flip and rng.random() < 0.5)
    return Plan(input_size=(h0, w0), pre_crop_size=pre, crop=crop, output_size=out, flip=flip)


# -- applying a plan -------------------------------------------------------------------------------------------------


def apply_image(image: np.ndarray, plan: Plan) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (plan.output_size..., 3), PIL bilinear resizes."""
    if plan.crop is not None:
        assert plan.pre_crop_size is not None
        image = resize_image(image, plan.pre_crop_size)
        top, left, ch, cw = plan.crop
        image = image[top : top + ch, left : left + cw]
    image = resize_image(np.ascontiguousarray(image), plan.output_size)
    if plan.flip:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def _resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(size):
        return mask
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.NEAREST))


def apply_bitmap(mask: np.ndarray, plan: Plan) -> np.ndarray:
    """A (H, W) mask at the input size -> bool mask at the output size (nearest resizes, crop, flip)."""
    m = mask.astype(np.uint8)
    if plan.crop is not None:
        assert plan.pre_crop_size is not None
        m = _resize_nearest(m, plan.pre_crop_size)
        top, left, ch, cw = plan.crop
        m = m[top : top + ch, left : left + cw]
    m = _resize_nearest(m, plan.output_size)
    if plan.flip:
        m = m[:, ::-1]
    return np.ascontiguousarray(m.astype(bool))


def apply_polygon(poly: Sequence[float], plan: Plan) -> list[float]:
    """Flat [x0, y0, x1, y1, ...] in input pixels -> the same points in output pixels (may lie off the canvas)."""
    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2).copy()
    h, w = plan.input_size
    if plan.crop is not None:
        assert plan.pre_crop_size is not None
        ph, pw = plan.pre_crop_size
        xy[:, 0] *= pw / w
        xy[:, 1] *= ph / h
        top, left, h, w = plan.crop
        xy[:, 0] -= left
        xy[:, 1] -= top
    oh, ow = plan.output_size
    xy[:, 0] *= ow / w
    xy[:, 1] *= oh / h
    if plan.flip:
        xy[:, 0] = ow - xy[:, 0]
    return xy.reshape(-1).tolist()


# -- rasterisation ---------------------------------------------------------------------------------------------------


def _decode(rle: Any) -> np.ndarray:
    """`pycocotools.mask.decode` -> bool, without its numpy-2 `__array__(copy=...)` DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*__array__ implementation doesn't accept a copy keyword", category=DeprecationWarning
        )
        return mask_util.decode(rle).astype(bool)


def polygons_to_mask(polygons: Sequence[Sequence[float]], h: int, w: int) -> np.ndarray:
    """pycocotools rasterisation (frPyObjects -> merge -> decode) of a polygon list; parts with < 3 points are
    ignored and an empty list gives an all-zero mask."""
    parts = [[float(v) for v in p] for p in polygons if len(p) >= 6 and len(p) % 2 == 0]
    if not parts:
        return np.zeros((h, w), dtype=bool)
    rle = mask_util.merge(mask_util.frPyObjects(parts, h, w))
    return _decode(rle)


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """A COCO RLE dict (compressed str/bytes counts or uncompressed list counts) -> bool (h, w) mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        obj = mask_util.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        obj = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    return _decode(obj)


def _instance_mask(segm: Any, image_size: tuple[int, int], plan: Plan) -> np.ndarray:
    oh, ow = plan.output_size
    if isinstance(segm, dict):
        m = rle_to_mask(segm)
        if m.shape != tuple(image_size):
            raise ValueError(f"RLE mask of size {m.shape} for an image of size {tuple(image_size)}")
        return apply_bitmap(m, plan)
    if isinstance(segm, np.ndarray) and segm.ndim == 2:
        return apply_bitmap(segm, plan)
    return polygons_to_mask([apply_polygon(p, plan) for p in segm], oh, ow)


# -- public entry points ---------------------------------------------------------------------------------------------


def train_transform(
    image: np.ndarray, annotations: Sequence[dict], cfg: InputConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment one training image with its annotations.

    -> (uint8 (H, W, 3) image, int64 (N,) labels, bool (N, H, W) masks) for the N non-crowd annotations, in order.
    """
    h, w = image.shape[:2]
    plan = sample_plan(h, w, cfg, rng)
    out = apply_image(image, plan)
    annos = [a for a in annotations if not a.get("iscrowd", 0)]
    labels = np.array([int(a["category_id"]) for a in annos], dtype=np.int64)
    oh, ow = plan.output_size
    masks = np.zeros((len(annos), oh, ow), dtype=bool)
    for i, a in enumerate(annos):
        masks[i] = _instance_mask(a["segmentation"], (h, w), plan)
    return out, labels, masks


def to_tensor_image(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) array -> uint8 (3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
