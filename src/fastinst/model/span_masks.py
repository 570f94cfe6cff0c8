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
  the box of such pixels (`CellResize.boxes`), and the matmuls only over the cells that box weighs; outside the box
  the mask is set False (its memory may be an earlier image's: `mask_memory`). A trained model's masks are objects,
  a small part of the photo. Masks whose boxes are a large part of the photo (`SHARED_BOX_FROM`) are scored and made
  several at a time over the box that holds theirs (`CellResize.values` of several masks: one pair of matmuls and
  one pass of each elementwise op instead of a dozen small calls per mask).
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

import torch
import torch.nn.functional as F

from .fuse import native_bf16_cpu
from .mask_memory import clear_outside, mask_memory

SCORE_STEP = 3
"""Mask scores are taken on the photo's every SCORE_STEP-th pixel row and column, a ninth of the pixels: within 8e-4 of
every pixel's on the fixture photo's masks (step 2: 4.6e-4, 4: 1.8e-3), 1.4e-3 on benchmarks/postprocess.py's object
masks; the demo's AP as with every pixel (56.72 vs 56.75)."""

EXACT_SCORE_BELOW = 256
"""Masks with fewer pixels than this inside on the sampled rows and columns are scored on all of their pixels."""

SHARED_BOX_FROM = 4
"""Masks whose box holds at least 1 / SHARED_BOX_FROM of the photo are scored together (`mask_scores`)."""

MASK_GROUP = 1 << 23
"""Pixels (16 MiB of bf16 values) of a run of masks with large boxes made together (`ordered_masks`): 9 masks of a
1080x810 photo, one of a 4K frame (58 photo-wide masks on an AMX Xeon: 22 ms one at a time, 16-17 in runs)."""

SCORE_GROUP = 1 << 20
"""Sampled values (4 MiB in fp32) that one step of scoring masks together holds."""

LOW_PRECISION_FROM = 1 << 16
"""Boxes of at least this many pixels (256x256) are computed in bf16 where the CPU has bf16 hardware: a bf16 weight
moves an edge by a few hundredths of a pixel, nothing to a large mask, up to 8 % IoU of a 50-pixel one."""


@dataclass(frozen=True)
class AxisWeights:
    """The official resizes along one axis as a matrix: `weights` (pixels, cells) float32, pixel p = sum over cells
    c of weights[p, c] * cell c; `first` / `stop` (pixels,) int64: the cells row p weighs are first[p]..stop[p]-1;
    `support` (cells, pixels) float32: 1 where a pixel weighs a cell."""

    weights: torch.Tensor
    first: torch.Tensor
    stop: torch.Tensor
    support: torch.Tensor


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
    return AxisWeights(weights, first, stop, on.t().float().contiguous())


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
        dtypes = [torch.float32]
        if native_bf16_cpu() if low_precision is None else low_precision:
            dtypes.append(torch.bfloat16)
        self.low = dtypes[-1]  # the dtype of large boxes
        self.cells = {d: logits.to(d) for d in dtypes}  # (u, Hp/8, Wp/8) per dtype
        self.boxes = self._boxes(self.cells[torch.float32])  # (torch's bf16 max-reductions are 3x slower)
        self._weights: dict[tuple[torch.dtype, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._scratch: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.boxes)

    def _boxes(self, logits: torch.Tensor) -> list[Box]:
        """(u, Hp/8, Wp/8) cells -> per mask the box of pixels that weigh a positive one (outside it every pixel is
        <= 0: the weights are >= 0)."""
        bounds = []
        row_peaks = logits.amax(2)  # (u, Hp/8): each row's largest cell
        for axis, peaks in ((0, row_peaks), (1, logits.amax(1))):  # (u, cells): each line's largest cell
            near = ((peaks > 0).float() @ self.axes[axis].support) > 0  # (u, pixels): pixels weighing a positive cell
            first = near.byte().argmax(1)
            stop = self.size[axis] - near.flip(1).byte().argmax(1)
            bounds.append((first.tolist(), stop.tolist()))
        nonempty = (row_peaks.amax(1) > 0).tolist()
        (y0, y1), (x0, x1) = bounds
        return [(y0[i], y1[i], x0[i], x1[i]) if nonempty[i] else (0, 0, 0, 0) for i in range(len(nonempty))]

    def weights(self, dtype: torch.dtype, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights of every `step`-th pixel row of the photo, (H0 / step, Hp/8), and of every `step`-th pixel
        column transposed, (Wp/8, W0 / step): contiguous in `dtype`, as the matmuls take them (a transposed or
        strided operand costs them a copy)."""
        key = (dtype, step)
        if key not in self._weights:
            ys, xs = self.axes
            rows = ys.weights[::step].to(dtype).contiguous()
            self._weights[key] = (rows, xs.weights[::step].t().to(dtype).contiguous())
        return self._weights[key]

    def scratch(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A flat `dtype` buffer of `numel` elements, the same memory at each call with this name (new memory per
        image costs the kernel's page faults: as much as the work done in it)."""
        buffer = self._scratch.get((name, dtype))
        if buffer is None or buffer.numel() < numel:
            buffer = self._scratch[name, dtype] = torch.empty(numel, dtype=dtype)
        return buffer[:numel]

    def _operands(self, box: Box, step: int):
        """The photo's every `step`-th pixel row and column inside `box` -> their row weights (Sy, Ky), their column
        weights transposed (Kx, Sx), the cells they weigh (a row slice and a column slice) and the dtype: fp32, or
        `self.low` for a box of `LOW_PRECISION_FROM` such pixels or more."""
        y0, y1, x0, x1 = (-(-v // step) for v in box)  # the box on the grid of every step-th pixel
        dtype = self.low if (y1 - y0) * (x1 - x0) >= LOW_PRECISION_FROM else torch.float32
        row_weights, column_weights = self.weights(dtype, step)  # (H0 / step, Hp/8), (Wp/8, W0 / step)
        ys, xs = self.axes
        r0, r1 = int(ys.first[y0 * step]), int(ys.stop[(y1 - 1) * step])  # the cells these pixels weigh
        c0, c1 = int(xs.first[x0 * step]), int(xs.stop[(x1 - 1) * step])
        a = row_weights[y0:y1, r0:r1]  # (Sy, Ky)
        b = column_weights[c0:c1, x0:x1]  # (Kx, Sx)
        return a, b, (slice(r0, r1), slice(c0, c1)), dtype

    def values(self, indices: list[int], box: Box, step: int) -> torch.Tensor:
        """The values of masks `indices` at the pixel rows and columns of `box` that are multiples of `step` ->
        (len(indices), rows, columns), fp32 or (a large box) `self.low`, in a scratch buffer that the next call
        overwrites: one pair of matmuls for all the masks, over only the cells the box weighs."""
        a, b, (rows, columns), dtype = self._operands(box, step)
        cells = self.cells[dtype][:, rows, columns][indices]  # (g, Ky, Kx)
        (g, ky, kx), (sy, sx) = cells.shape, (a.shape[0], b.shape[1])
        most = -(-self.size[0] // step) * -(-self.size[1] // step)  # the whole photo at this step: sized once
        target = self.scratch("values", max(most, g * sy * sx), dtype)[: g * sy * sx].view(g, sy, sx)
        with torch.autocast("cpu", enabled=False):  # the dtype chosen here, also inside a bf16 predictor's autocast
            if kx <= ky:  # the cheaper order of the two products
                return torch.matmul(torch.matmul(a, cells), b, out=target)  # (g, Sy, Kx) @ (Kx, Sx)
            return torch.matmul(a, cells @ b, out=target)  # (Sy, Ky) @ (g, Ky, Sx)


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


def _union(boxes: list[Box]) -> Box:
    """The box that holds all of `boxes` (non-empty ones)."""
    return (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))


def _large(resize: CellResize, box: Box) -> bool:
    """Whether a mask's box holds at least 1 / `SHARED_BOX_FROM` of the photo (such masks are scored and made
    together)."""
    y0, y1, x0, x1 = box
    return (y1 - y0) * (x1 - x0) * SHARED_BOX_FROM >= resize.size[0] * resize.size[1]


def _area(flags: torch.Tensor) -> torch.Tensor:
    """(g, rows, columns) 0 / 1 flags (`_flags`) of g masks -> how many are 1 per mask, float64 (g,), exactly. int16
    flags are summed along each row in int16 (exact below 2^15 columns), then the rows: 3x faster than one float32
    sum of them, which converts each flag on the way."""
    if flags.dtype == torch.int16 and flags.shape[2] < 1 << 15:
        return flags.sum(2, dtype=torch.int16).sum(1).double()
    return flags.flatten(1).sum(1, dtype=torch.float64)  # float32 0 / 1: exact


def _probability_sums(resize: CellResize, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, rows, columns) values of g masks -> per mask the sum of its probabilities > 0.5 and how many there are,
    float64 (g,) each; overwrites `values`. A pixel <= 0 adds exactly 0 to the sum: its probability is taken as
    sigmoid(max(v, 0)) = 0.5 (in float32: bf16 sigmoids are 2e-3 off), and 0.5 is taken off for it."""
    probs = resize.scratch("probs", values.numel(), torch.float32).view_as(values).copy_(values).relu_().sigmoid_()
    area = _area(_flags(values))  # (g,)
    return probs.flatten(1).sum(1).double() - 0.5 * (values[0].numel() - area), area


def _score_each(resize: CellResize, step: int, indices: list[int], scores: torch.Tensor) -> list[int]:
    """Score masks `indices` one at a time inside each one's box, on every `step`-th row and column, into `scores`;
    -> those with fewer than `EXACT_SCORE_BELOW` pixels inside there."""
    small = []
    for i in indices:
        total, area = _probability_sums(resize, resize.values([i], resize.boxes[i], step))
        scores[i] = float(total[0] / (area[0] + 1e-6))
        if area[0] < EXACT_SCORE_BELOW:
            small.append(i)
    return small


def _score_together(resize: CellResize, step: int, indices: list[int], scores: torch.Tensor) -> list[int]:
    """`_score_each` for masks with large boxes: all of them over the one box that holds their boxes, `SCORE_GROUP`
    sampled values at a time (pixels outside a mask's own box are <= 0 and add nothing)."""
    box = _union([resize.boxes[i] for i in indices])
    y0, y1, x0, x1 = (-(-v // step) for v in box)
    group = max(1, SCORE_GROUP // ((y1 - y0) * (x1 - x0)))
    small = []
    for s in range(0, len(indices), group):
        chunk = indices[s : s + group]
        total, area = _probability_sums(resize, resize.values(chunk, box, step))  # (g,) each
        scores[chunk] = (total / (area + 1e-6)).float()
        small += [i for i, a in zip(chunk, area.tolist(), strict=True) if a < EXACT_SCORE_BELOW]
    return small


def mask_scores(resize: CellResize) -> torch.Tensor:
    """The mask score of each mask, (u,) float32: the mean probability over its pixels with probability > 0.5, on
    every `SCORE_STEP`-th row and column (on all pixels for small masks); 0 for an empty mask, as officially.

    Masks whose box holds at least 1 / `SHARED_BOX_FROM` of the photo are scored together (`_score_together`: two
    batched matmuls and one pass of each elementwise op per group instead of a dozen calls per mask), the others
    each inside its own box."""
    scores = torch.zeros(len(resize), dtype=torch.float32)
    large: list[int] = []
    rest: list[int] = []
    for i, box in enumerate(resize.boxes):
        if box[0] < box[1]:  # no positive cell: no pixel inside, score 0
            (large if _large(resize, box) else rest).append(i)
    small = _score_each(resize, SCORE_STEP, rest, scores)
    if large:
        small += _score_together(resize, SCORE_STEP, large, scores)
    if small:
        _score_each(resize, 1, small, scores)
    return scores


def ordered_masks(resize: CellResize, order: list[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """Bool (len(order), H0, W0) masks (probability > 0.5, i.e. value > 0), place j holding mask `order[j]` (a mask
    may repeat), in `out` if given. Each mask is made inside its box and set False outside it, so no memory is
    cleared twice: `mask_memory`'s reused memory costs nothing to clear under a mask that spans the photo. Runs of
    places whose masks have large boxes (`MASK_GROUP` pixels) are made together over the box that holds theirs."""
    masks = mask_memory((len(order), *resize.size)) if out is None else out
    run = max(1, MASK_GROUP // (resize.size[0] * resize.size[1]))  # masks per run
    j = 0
    while j < len(order):
        box = resize.boxes[order[j]]
        k = j + 1
        if _large(resize, box):
            while k < len(order) and k - j < run and _large(resize, resize.boxes[order[k]]):
                k += 1
            box = _union([resize.boxes[i] for i in order[j:k]])
        y0, y1, x0, x1 = box
        for place in range(j, k):
            clear_outside(masks[place], box)
        if y0 < y1:
            positive(resize.values(order[j:k], box, 1), out=masks[j:k, y0:y1, x0:x1])
        j = k
    return masks
