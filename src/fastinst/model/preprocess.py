"""Test-time resize exactly as the official pipeline (detectron2 ResizeShortestEdge, PIL bilinear on uint8)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def resize_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w): shorter side -> `short`, longer side capped at `max_size`, each rounded with int(v + 0.5)."""
    scale = short / min(h, w)
    nh, nw = (short, scale * w) if h < w else (scale * h, short)
    if max(nh, nw) > max_size:
        s = max_size / max(nh, nw)
        nh, nw = nh * s, nw * s
    return int(nh + 0.5), int(nw + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size[0], size[1], 3) with PIL's fixed-point bilinear filter (antialiased downscale)."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def to_model_input(image: np.ndarray, short: int, max_size: int) -> dict:
    """One RGB uint8 image (H0, W0, 3) -> the model's input dict (resized CHW uint8 tensor + original size)."""
    h0, w0 = image.shape[:2]
    resized = resize_image(image, resize_shape(h0, w0, short, max_size))
    return {"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": h0, "width": w0}
