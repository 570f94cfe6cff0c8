"""Test-time resize exactly as the official pipeline (detectron2 ResizeShortestEdge, PIL bilinear on uint8), and the
one normalise + zero-pad of every backend (`FastInst.preprocess`, the ONNX export's inputs, `OnnxModel`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.images import resize_image, resize_shape

__all__ = ["normalize_and_pad", "resize_image", "resize_shape", "to_model_input"]


def to_model_input(image: np.ndarray, short: int, max_size: int) -> dict:
    """One RGB uint8 image (H0, W0, 3) -> the model's input dict (resized CHW uint8 tensor + original size)."""
    h0, w0 = image.shape[:2]
    resized = resize_image(image, resize_shape(h0, w0, short, max_size))
    return {"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": h0, "width": w0}


def normalize_and_pad(
    images: Sequence[torch.Tensor],
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
    size_divisibility: int,
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """uint8 (3, h_i, w_i) images -> (normalised batch (B, 3, H, W), [(h_i, w_i)]), on the images' device.

    Each image becomes (image - mean) / std in float32 on the 0-255 scale (mean, std: 3 values or (3, 1, 1)
    tensors), then is zero-padded bottom/right: H, W = the largest h_i, w_i rounded up to a multiple of
    `size_divisibility`, or `size` when given (a fixed network input; it must hold every image).
    """
    if not images:
        raise ValueError("normalize_and_pad: no images")
    device = images[0].device
    mean_t = torch.as_tensor(mean, device=device).reshape(-1, 1, 1)  # (3, 1, 1)
    std_t = torch.as_tensor(std, device=device).reshape(-1, 1, 1)  # (3, 1, 1)
    normed = [(im.float() - mean_t) / std_t for im in images]  # (3, h_i, w_i) each
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in normed]
    div = size_divisibility
    h = -(-max(s[0] for s in sizes) // div) * div
    w = -(-max(s[1] for s in sizes) // div) * div
    if size is not None:
        if h > size[0] or w > size[1]:
            raise ValueError(f"a batch padded to {h}x{w} does not fit the fixed input {size[0]}x{size[1]}")
        h, w = int(size[0]), int(size[1])
    batch = normed[0].new_zeros(len(normed), normed[0].shape[0], h, w)  # (B, 3, H, W)
    for i, im in enumerate(normed):
        batch[i, :, : im.shape[1], : im.shape[2]] = im
    return batch, sizes
