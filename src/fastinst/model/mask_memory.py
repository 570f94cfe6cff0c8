"""Memory for the full-size bool masks of post-processing, reused from one image to the next.

A photo's masks are large (58 masks of a 1080x810 photo: 51 MB) and each image's are new memory: the kernel hands
out fresh pages and zeroes them as they are first written, which on the machines measured cost as much as making the
masks (AMX Xeon, after the network: 13-21 ms of writing 58 masks into fresh memory vs 7-8 ms into memory used
before). `mask_memory` gives the masks of the next image the memory of earlier ones once nothing refers to those any
more (the caller dropped the results, as a video loop or a folder of photos does), and new memory while anything
still holds them (results kept in a list are never overwritten). It keeps at most `KEEP_BUFFERS` buffers, each of up
to `KEEP_UP_TO` bytes, between images.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import torch

KEEP_UP_TO = 1 << 28
"""The largest buffer (bytes, 256 MiB) kept for the next image; larger masks get their own memory each time."""

KEEP_BUFFERS = 2
"""How many buffers are kept: a loop that still holds one image's results while the next image's are made (a `for`
over a stream or a folder keeps its loop variable until the next result replaces it) alternates between two."""

_spare: list[np.ndarray] = []  # flat bool buffers, the most recently used last
_idle: list[int] = []  # the reference count of each `_spare[i]` seen by `_references` when nothing else holds it
_lock = threading.Lock()


def _references(buffer: np.ndarray) -> int:
    """The reference count of `buffer` as seen from here (views of it, and the tensors over them, each add one)."""
    return sys.getrefcount(buffer)


def mask_memory(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised CPU bool tensor of `shape`: in a kept buffer that nothing else refers to and that is large
    enough (the most recently used first), else in new memory, which is kept in place of a free buffer too small for
    it, or of the least recently used one once `KEEP_BUFFERS` are kept (a buffer still in use stays its holder's)."""
    need = math.prod(shape)
    with _lock:
        free = [i for i in range(len(_spare)) if _references(_spare[i]) == _idle[i]]
        fits = [i for i in free if _spare[i].size >= need]
        if fits:
            chosen = fits[-1]
            _spare.append(_spare.pop(chosen))
            _idle.append(_idle.pop(chosen))
        else:
            if need > KEEP_UP_TO:
                return torch.from_numpy(np.empty(shape, dtype=bool))
            if free or len(_spare) >= KEEP_BUFFERS:
                drop = free[0] if free else 0
                del _spare[drop], _idle[drop]
            # room for a few more masks than now, so that the next image with one more does not need new memory
            _spare.append(np.empty(min(KEEP_UP_TO, need + need // 4), dtype=bool))  # numpy asks for huge pages
            _idle.append(_references(_spare[-1]))
        return torch.from_numpy(_spare[-1][:need].reshape(shape))


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
