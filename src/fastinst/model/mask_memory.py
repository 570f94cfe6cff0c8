"""Memory for the full-size bool masks of post-processing, reused from one image to the next.

A photo's masks are large (58 masks of a 1080x810 photo: 51 MB) and each image's are new memory: the kernel hands
out fresh pages and zeroes them as they are first written, which on the machines measured cost as much as making the
masks (AMX Xeon, after the network: 13-21 ms of writing 58 masks into fresh memory vs 7-8 ms into memory used
before). `mask_memory` gives the masks of the next image the memory of earlier ones once nothing refers to those any
more (the caller dropped the results, as a video loop or a folder of photos does), and new memory while anything
still holds them (results kept in a list are never overwritten). It keeps at most one buffer, of up to
`KEEP_UP_TO` bytes, between images.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import torch

KEEP_UP_TO = 1 << 28
"""The largest buffer (bytes, 256 MiB) kept for the next image; larger masks get their own memory each time."""

_spare: list[np.ndarray] = []  # at most one flat bool buffer, and what holds it when nothing else does
_idle: list[int] = []  # the reference count of `_spare[0]` seen by `_references` when nothing else holds it
_lock = threading.Lock()


def _references(buffer: np.ndarray) -> int:
    """The reference count of `buffer` as seen from here (views of it, and the tensors over them, each add one)."""
    return sys.getrefcount(buffer)


def mask_memory(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised CPU bool tensor of `shape`: in the kept buffer when nothing else refers to it and it is large
    enough, else in new memory (which becomes the kept buffer if it is at most `KEEP_UP_TO` bytes)."""
    need = math.prod(shape)
    with _lock:
        free = bool(_spare) and _references(_spare[0]) == _idle[0] and _spare[0].size >= need
        if not free:
            if need > KEEP_UP_TO:
                return torch.from_numpy(np.empty(shape, dtype=bool))
            # room for a few more masks than now, so that the next image with one more does not need new memory
            size = min(KEEP_UP_TO, need + need // 4)
            _spare[:] = [np.empty(size, dtype=bool)]  # numpy asks for huge pages for large arrays
            _idle[:] = [_references(_spare[0])]
        return torch.from_numpy(_spare[0][:need].reshape(shape))


def clear_outside(mask: torch.Tensor, box: tuple[int, int, int, int]) -> None:
    """Set the pixels of one (H, W) mask outside `box` (y0, y1, x0, x1) to False; all of them for an empty box."""
    y0, y1, x0, x1 = box
    if y0 >= y1 or x0 >= x1:
        mask.zero_()
        return
    height, width = mask.shape
    if y0 > 0:
        mask[:y0].zero_()
    if y1 < height:
        mask[y1:].zero_()
    if x0 > 0:
        mask[y0:y1, :x0].zero_()
    if x1 < width:
        mask[y0:y1, x1:].zero_()
