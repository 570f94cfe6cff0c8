"""Masks and mask scores from the mask logits of a bf16 network on a CPU, made only inside each mask's box.

The official post-processing (`postprocess.binary_masks`, kept bit for bit for fp32 logits) resizes each kept mask's
stride-8 logits twice to the photo's size (x8 to the padded batch, crop, resize) and makes five full-size float
passes over it. Logits of a bf16 network (`--dtype bf16`, the default on CPUs with bf16 hardware; OpenVINO bf16 and
INT8) take this shorter route in `postprocess.instances`, with the same two resizes:

* Each resize is linear and separable, so the two of them along one axis are one matrix, (pixels, cells), with a
  handful of non-zero weights per row (`AxisWeights`, computed by torch's own resize of the unit vectors). A mask's
  values are then `rows @ cells @ columns.T`: two matmuls, in fp32, and for large boxes in bf16 where the CPU has
  bf16 hardware (`LOW_PRECISION_FROM`: a bf16 weight moves an edge by a few hundredths of a pixel).
* All weights are >= 0, so a pixel can be positive only where it weighs a positive cell: each mask is made only over
  the box of such pixels (`CellResize.boxes`), and the matmuls only over the cells that box weighs. Outside the box
  the mask stays the zero of fresh memory. A trained model's masks are objects, a small part of the photo.
* The mask score (the mean probability over the mask) is taken first, on the photo's every third row and column
  (`mask_scores`; every pixel for a mask with fewer than `EXACT_SCORE_BELOW` pixels there), so the instances are
  scored, ordered and thresholded before any full-size mask exists: each kept mask is then made once, straight into
  its place (`ordered_masks`: no reordering copy, nothing made for a pair the final threshold drops).

Masks equal the official route's up to the float rounding of the weights (fp32: IoU 1.0 on photos; bf16: >= 0.99),
scores to ~1e-3 (tests/model/test_postprocess.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .fuse import native_bf16_cpu

SCORE_STEP = 3
"""Mask scores are taken on the photo's every SCORE_STEP-th pixel row and column, a ninth of the pixels: within 8e-4 of
every pixel's on the fixture photo's masks (step 2: 4.6e-4, 4: 1.8e-3), 1.4e-3 on benchmarks/postprocess.py's object
masks; the demo's AP as with every pixel (56.72 vs 56.75)."""

EXACT_SCORE_BELOW = 256
"""Masks with fewer pixels than this inside on the sampled rows and columns are scored on all of their pixels."""

LOW_PRECISION_FROM = 1 << 16
"""Boxes of at least this many pixels (256x256) are computed in bf16 where the CPU has bf16 hardware: a bf16 weight
moves an edge by a few hundredths of a pixel, nothing to a large mask, up to 8 % IoU of a 50-pixel one."""


@dataclass(frozen=True)
class AxisWeights:
    """The official resizes along one axis as a matrix: `weights` (pixels, cells) float32, pixel p = sum over cells
    c of weights[p, c] * cell c; `first` / `stop` (pixels,) int64: the cells row p weighs are first[p]..stop[p]-1."""

    weights: torch.Tensor
    first: torch.Tensor
    stop: torch.Tensor


@functools.lru_cache(maxsize=16)
def axis_weights(padded: int, resized: int, original: int) -> AxisWeights:
    """Along one axis: the x8 bilinear upsample of padded // 8 cells to `padded` pixels, the crop to `resized`, the
    bilinear resize to `original` (align_corners=False, as `postprocess._full_size`), applied by torch to each unit
    vector. Cached: a video's frames share it."""
    cells = padded // 8
    basis = torch.eye(cells)[None, :, :, None]  # (1, cells, cells, 1): cell c as channel c
    x = F.interpolate(basis, size=(padded, 1), mode="bilinear", align_corners=False)[:, :, :resized]
    if resized != original:
        x = F.interpolate(x, size=(original, 1), mode="bilinear", align_corners=False)
    weights = x[0, :, :, 0].t().contiguous()  # (original, cells)
    on = weights > 0
    first = on.byte().argmax(1)  # a bilinear row weighs a run of neighbouring cells
    stop = cells - on.flip(1).byte().argmax(1)
    return AxisWeights(weights, first, stop)


Box = tuple[int, int, int, int]
"""(y0, y1, x0, x1): pixel rows y0..y1-1 and columns x0..x1-1; (0, 0, 0, 0) for a mask that is empty."""


class CellResize:
    """The stride-8 logits (u, Hp/8, Wp/8) of u masks -> their values at the photo's pixels (both official resizes),
    one mask and one box at a time, as `rows @ cells @ columns.T`: in fp32, and for boxes of `LOW_PRECISION_FROM`
    pixels or more in bf16 where `low_precision` (default: the CPU has bf16 hardware)."""

    def __init__(
        self,
        logits: torch.Tensor,
        padded: tuple[int, int],
        resized: tuple[int, int],
        original: tuple[int, int],
        low_precision: bool | None = None,
    ):
        self.axes = (axis_weights(padded[0], resized[0], original[0]), axis_weights(padded[1], resized[1], original[1]))
        self.size = original
        self.boxes = self._boxes(logits > 0)
        dtypes = [torch.float32]
        if native_bf16_cpu() if low_precision is None else low_precision:
            dtypes.append(torch.bfloat16)
        self.low = dtypes[-1]  # the dtype of large boxes
        self.cells = {d: logits.to(d) for d in dtypes}  # (u, Hp/8, Wp/8) per dtype
        self._weights: dict[tuple[torch.dtype, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._scratch: dict[torch.dtype, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.boxes)

    def _boxes(self, positive: torch.Tensor) -> list[Box]:
        """(u, Hp/8, Wp/8) positive cells -> per mask the box of pixels that weigh one of them (outside it every
        pixel is <= 0: the weights are >= 0)."""
        bounds = []
        for axis, lines in ((0, positive.any(2)), (1, positive.any(1))):  # (u, cells): lines with a positive cell
            support = (self.axes[axis].weights > 0).float()  # (pixels, cells)
            near = (lines.float() @ support.t()) > 0  # (u, pixels): pixels weighing a positive cell
            first = near.byte().argmax(1)
            stop = self.size[axis] - near.flip(1).byte().argmax(1)
            bounds.append((first.tolist(), stop.tolist()))
        nonempty = positive.flatten(1).any(1).tolist()
        (y0, y1), (x0, x1) = bounds
        return [(y0[i], y1[i], x0[i], x1[i]) if nonempty[i] else (0, 0, 0, 0) for i in range(len(nonempty))]

    def weights(self, dtype: torch.dtype, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The row and column weights of every `step`-th pixel row / column of the photo: (H0 / step, Hp/8) and
        (W0 / step, Wp/8), contiguous in `dtype` (strided operands cost the matmuls a copy each)."""
        key = (dtype, step)
        if key not in self._weights:
            self._weights[key] = tuple(a.weights[::step].to(dtype).contiguous() for a in self.axes)  # type: ignore[assignment]
        return self._weights[key]

    def values(self, i: int, box: Box, step: int) -> torch.Tensor:
        """Mask i's values at the pixel rows and columns of `box` that are multiples of `step` -> (rows, columns),
        fp32 or (a large box) `self.low`, in a scratch buffer that the next call overwrites; only the cells the box
        weighs take part."""
        y0, y1, x0, x1 = (-(-v // step) for v in box)  # the box on the grid of every step-th pixel
        shape = (y1 - y0, x1 - x0)
        dtype = self.low if shape[0] * shape[1] >= LOW_PRECISION_FROM else torch.float32
        row_weights, column_weights = self.weights(dtype, step)
        ys, xs = self.axes
        r0, r1 = int(ys.first[y0 * step]), int(ys.stop[(y1 - 1) * step])  # the cells these pixels weigh
        c0, c1 = int(xs.first[x0 * step]), int(xs.stop[(x1 - 1) * step])
        a = row_weights[y0:y1, r0:r1]  # (Sy, Ky)
        b = column_weights[x0:x1, c0:c1].t()  # (Kx, Sx)
        cells = self.cells[dtype][i, r0:r1, c0:c1]  # (Ky, Kx)
        scratch = self._scratch.get(dtype)
        if scratch is None or scratch.numel() < shape[0] * shape[1]:
            most = -(-self.size[0] // step) * -(-self.size[1] // step)  # the whole photo at this step
            scratch = self._scratch[dtype] = torch.empty(max(most, shape[0] * shape[1]), dtype=dtype)
        target = scratch[: shape[0] * shape[1]].view(shape)
        with torch.autocast("cpu", enabled=False):  # the dtype chosen here, also inside a bf16 predictor's autocast
            if (c1 - c0) <= (r1 - r0):  # the cheaper order of the two products
                return torch.mm(a @ cells, b, out=target)  # (Sy, Kx) @ (Kx, Sx)
            return torch.mm(a, cells @ b, out=target)  # (Sy, Ky) @ (Ky, Sx)


def _flags(values: torch.Tensor) -> torch.Tensor:
    """values > 0 as 0 / 1 in their own dtype, in place. bf16 values are compared as the int16 of their bits (the same
    answer: the sign bit, and +0 is 0; only a NaN logit, which has no mask, would count as inside): torch vectorises a
    compare into the input's dtype, not one into bool or a bf16 compare."""
    bits = values.view(torch.int16) if values.dtype == torch.bfloat16 else values
    return torch.gt(bits, 0, out=bits)


def positive(values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """values > 0 into the bool tensor `out`, overwriting bf16 `values`: bf16 as `_flags` narrowed into `out` (2.5x
    faster than a compare into bool), fp32 compared straight into `out` (there the faster: 11 vs 23 ms, 59 masks)."""
    if values.dtype != torch.bfloat16:
        return torch.gt(values, 0, out=out)
    out.view(torch.uint8).copy_(_flags(values))
    return out


def _count_positive(values: torch.Tensor) -> int:
    """How many values are > 0, overwriting `values`: the sum of `_flags` (count_nonzero is not vectorised)."""
    return int(_flags(values).sum(dtype=torch.float64))


def _score_on(resize: CellResize, step: int, indices: list[int], scores: torch.Tensor) -> list[int]:
    """Score masks `indices` on every `step`-th row and column into `scores`; -> those with fewer than
    `EXACT_SCORE_BELOW` pixels inside there."""
    h, w = resize.size
    probs = torch.empty(-(-h // step) * -(-w // step))
    small = []
    for i in indices:
        box = resize.boxes[i]
        if box[0] == box[1]:  # no positive cell: no pixel inside, score 0
            continue
        values = resize.values(i, box, step)
        # sigmoid(max(v, 0)) in float32 (bf16 sigmoids: 2e-3 off): the probability inside the mask, exactly 0.5 outside
        p = probs[: values.numel()].view_as(values).copy_(values).clamp_(min=0).sigmoid_()
        area = _count_positive(values)
        total = float(p.sum()) - 0.5 * (p.numel() - area)  # the sum of the probabilities > 0.5
        scores[i] = total / (area + 1e-6)
        if area < EXACT_SCORE_BELOW:
            small.append(i)
    return small


def mask_scores(resize: CellResize) -> torch.Tensor:
    """The mask score of each mask, (u,) float32: the mean probability over its pixels with probability > 0.5, on
    every `SCORE_STEP`-th row and column (on all pixels for small masks); 0 for an empty mask, as officially."""
    scores = torch.zeros(len(resize), dtype=torch.float32)
    small = _score_on(resize, SCORE_STEP, list(range(len(resize))), scores)
    if small:
        _score_on(resize, 1, small, scores)
    return scores


def ordered_masks(resize: CellResize, order: list[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """Bool (len(order), H0, W0) masks (probability > 0.5, i.e. value > 0), place j holding mask `order[j]` (a mask
    may repeat). `out`: a bool tensor of that shape to write into (zeroed first)."""
    # numpy's zeros come from calloc: fresh pages the kernel zeroes when first touched, so the pixels outside the
    # boxes cost nothing here (torch.zeros writes all of them: 17 vs 3 ms for 70 object masks at 1080x810)
    masks = torch.from_numpy(np.zeros((len(order), *resize.size), dtype=bool)) if out is None else out.zero_()
    for j, i in enumerate(order):
        y0, y1, x0, x1 = resize.boxes[i]
        if y0 < y1:
            positive(resize.values(i, resize.boxes[i], 1), out=masks[j, y0:y1, x0:x1])
    return masks
