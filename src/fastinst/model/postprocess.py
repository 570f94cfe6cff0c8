"""Instance inference (SPEC §2.6): top-k (query, class) pairs, score = class prob × mean mask prob, masks at full size.

The official code upsamples all Q mask logits to the padded size and then to the original size. Both resizes act on
each query independently, so `instances` runs them only for the queries the top-k — and the score threshold — keep:
same numbers, less work. It is the one post-processing of every backend (PyTorch, ONNX Runtime).
`instances_reference` is the straightforward official order, kept for tests and benchmarks.

Mask logits that come out of a bf16 network (`pred_masks.dtype == torch.bfloat16`: `--dtype bf16`, the default on
CPUs with bf16 hardware; OpenVINO in bf16 and INT8) take a shorter route on a CPU (`fastinst.model.span_masks`): the
same two resizes as one matrix per axis, applied by two matmuls only inside the box where a mask can be positive,
the threshold on the logit, the mask scores first on every third row and column so that each kept mask is made
once, straight into its place. Its masks and scores agree with the official route's (IoU >= 0.99, scores within
1e-2) where the bf16 network already moves them more; fp32 logits keep the official order, bit for bit.

Huge images (a 10000x10000 photo) are post-processed in column tiles, one mask at a time, and their bool masks are
made in one buffer and put in score order inside it: memory holds the n masks returned (n × H0 × W0 bytes) plus one
float tile (`TILE_ELEMENTS`), not float masks at full size (800 MB a pair at 10000x10000) and a second copy of the
bool masks. See `binary_masks_tiled` and `arrange`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .mask_memory import mask_memory
from .span_masks import CellResize, mask_scores, ordered_masks

TILED_ABOVE = 1 << 27
"""Float32 elements (512 MiB) of full-size masks one step of `binary_masks` may hold at once (a step: two masks on a
CPU, all of them on CUDA); beyond that the masks are made one at a time in column tiles. Also the size (bytes) of
bool masks beyond which `instances` orders them in place (`arrange`) instead of gathering a copy."""

TILE_ELEMENTS = 1 << 24
"""Float32 elements (64 MiB) of one column tile: a tile is H0 rows × a multiple of `TILE_ALIGN` columns."""

TILE_ALIGN = 64
"""Tile widths are multiples of this and a short last tile joins the one before: torch's CPU bilinear kernel gives
narrow outputs (under ~64 columns) other float roundings than the same columns of a wide one."""


def _full_size(logits: torch.Tensor, padded: tuple[int, int], resized: tuple[int, int], original: tuple[int, int]):
    """(n, h8, w8) stride-8 logits -> (n, H0, W0): upsample to the padded batch, crop to the image, resize."""
    x = F.interpolate(logits.unsqueeze(0), size=padded, mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    if tuple(resized) == tuple(original):  # a same-size bilinear resize is the identity: skip the copy
        return x[0]
    return F.interpolate(x, size=original, mode="bilinear", align_corners=False)[0]


def binary_masks(
    logits: torch.Tensor,
    padded: tuple[int, int],
    resized: tuple[int, int],
    original: tuple[int, int],
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, h8, w8) stride-8 logits -> bool masks (u, H0, W0) (probability > 0.5) and mask scores (u,) (the mean
    probability inside each mask), as the official code computes them.

    On a CPU two masks go through all the full-size passes (two resizes, sigmoid, threshold, sums) at a time, so that
    their floats stay in cache instead of a round trip to memory per pass: 1.8x faster for 58 masks at 1080x810.
    Masks are bit-identical to the all-at-once order. So are the scores with one or two threads (an odd last mask is
    done together with the one before it, a lone mask as a pair with itself); with more threads torch may split a
    sum between threads differently for another shape, which moves a score by its last bit, as the official code's
    own sums move between machines.

    When one step's full-size floats would exceed `TILED_ABOVE` values (a CPU pair of masks over 64 Mpixel, e.g. a
    10000x10000 image), `binary_masks_tiled` makes the masks one at a time in column tiles instead: the same masks,
    the same scores to the rounding of their sums. `out`: a bool (u, H0, W0) tensor to write the masks into.
    """
    n = logits.shape[0]
    step = n if logits.is_cuda else 2
    if _tiled(logits, resized, original):
        return binary_masks_tiled(logits.float(), padded, resized, original, out=out)
    if _short_route(logits, resized, original):
        resize = CellResize(logits, padded, resized, original)
        return ordered_masks(resize, list(range(n)), out=out), mask_scores(resize)
    logits = logits.float()
    if n == 1 and step == 2:  # a lone mask's sum would be split between threads: do it as one of a pair
        binary, scores = binary_masks(logits.expand(2, -1, -1), padded, resized, original)
        return (binary[:1] if out is None else out.copy_(binary[:1])), scores[:1]
    binary = _new_masks((n, *original), logits.device) if out is None else out
    scores = torch.empty(n, dtype=torch.float32, device=logits.device)
    for s in range(0, n, step):
        s = max(0, min(s, n - step))  # the last step overlaps the one before instead of being a single mask
        probs = _full_size(logits[s : s + step], padded, resized, original).sigmoid_()  # (2, H0, W0)
        inside = torch.gt(probs, 0.5, out=binary[s : s + step])
        area = inside.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32)  # exact, without an int64 copy
        # = (probs * binary).sum / binary.sum: an in-place threshold zeroes p <= 0.5 in one pass (masked_fill_ with
        # ~inside took two more passes over the masks and was 7x slower per pair); the same values, the same sums
        scores[s : s + step] = F.threshold(probs, 0.5, 0.0, inplace=True).flatten(1).sum(1) / (area + 1e-6)
    return binary, scores


def _new_masks(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Uninitialised bool masks: on a CPU in `mask_memory` (the memory of an earlier image's dropped masks)."""
    if device.type == "cpu":
        return mask_memory(shape)
    return torch.empty(shape, dtype=torch.bool, device=device)


def _tiled(logits: torch.Tensor, resized: tuple[int, int], original: tuple[int, int]) -> bool:
    """Whether `binary_masks` makes these masks in column tiles: a step's full-size floats (two masks on a CPU, all
    of them on CUDA) would pass `TILED_ABOVE` values, and the tiles reproduce the untiled masks."""
    step = logits.shape[0] if logits.is_cuda else 2
    return step * original[0] * original[1] > TILED_ABOVE and _tileable(resized, original)


def _short_route(logits: torch.Tensor, resized: tuple[int, int], original: tuple[int, int]) -> bool:
    """Whether these mask logits take `span_masks`: a bf16 network's, on a CPU, below the tiled sizes."""
    return logits.dtype == torch.bfloat16 and not logits.is_cuda and not _tiled(logits, resized, original)


def _tileable(resized: tuple[int, int], original: tuple[int, int]) -> bool:
    """Whether the tiled path reproduces the untiled one: the second resize enlarges (or keeps) both sides, as it
    always does for an image big enough to need tiles (the test resize shrinks it)."""
    return original[0] >= resized[0] and original[1] >= resized[1]


def column_tiles(width: int, height: int, elements: int) -> list[tuple[int, int]]:
    """[(start, stop)] column ranges covering `width`: about `elements` / `height` columns each, a multiple of
    `TILE_ALIGN`, the last one at least as wide as the others (a short remainder joins the tile before)."""
    step = max(TILE_ALIGN, elements // max(1, height) // TILE_ALIGN * TILE_ALIGN)
    starts = list(range(0, width, step))
    if len(starts) > 1 and width - starts[-1] < step:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else width) for i, s in enumerate(starts)]


def binary_masks_tiled(
    logits: torch.Tensor,
    padded: tuple[int, int],
    resized: tuple[int, int],
    original: tuple[int, int],
    elements: int | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`binary_masks` for huge outputs: the same masks, bit for bit, and the same scores up to the rounding of their
    sums, with at most one float tile of about `elements` (default `TILE_ELEMENTS`) values at full size at a time.

    One mask at a time: upsample to the padded size and crop (small), resize the width only to W0 (h × W0 floats),
    then resize the height of one column tile at a time to H0. A bilinear resize computes each output from its row
    pair and its column pair, so resizing the width first and the height second gives the joint resize's numbers
    (a same-size axis has weights 1 and 0), and the height pass of a column tile is the joint pass's columns. Each
    tile is thresholded into the returned masks; the mask score's sum is accumulated tile by tile (float32 tile sums
    added in float64), so it may differ from the one-pass float32 sum in its last bits.
    """
    n = logits.shape[0]
    height, width = original
    binary = _new_masks((n, height, width), logits.device) if out is None else out
    sums = torch.zeros(n, dtype=torch.float64, device=logits.device)
    areas = torch.zeros(n, dtype=torch.int64, device=logits.device)
    same = tuple(resized) == tuple(original)
    tiles = column_tiles(width, height, TILE_ELEMENTS if elements is None else elements)
    for i in range(n):
        x = F.interpolate(logits[i : i + 1].unsqueeze(0), size=padded, mode="bilinear", align_corners=False)
        x = x[..., : resized[0], : resized[1]]  # (1, 1, h, w)
        if not same:
            x = F.interpolate(x, size=(resized[0], width), mode="bilinear", align_corners=False)  # (1, 1, h, W0)
        for start, stop in tiles:
            tile = x[..., start:stop]
            if not same:
                tile = F.interpolate(tile, size=(height, stop - start), mode="bilinear", align_corners=False)
            probs = tile[0, 0].sigmoid() if same else tile[0, 0].sigmoid_()  # (H0, tile width)
            inside = torch.gt(probs, 0.5, out=binary[i, :, start:stop])
            areas[i] += inside.sum()
            sums[i] += F.threshold(probs, 0.5, 0.0, inplace=True).sum().double()
    return binary, sums.float() / (areas + 1e-6)


def _permute(masks: torch.Tensor, source: list[int]) -> None:
    """Move masks inside `masks` so that place j holds the old `masks[source[j]]` (`source`: a permutation), with one
    spare mask instead of a second copy of all of them."""
    spare: torch.Tensor | None = None
    placed = [False] * len(source)
    for start in range(len(source)):
        if placed[start] or source[start] == start:
            continue
        spare = masks[start].clone() if spare is None else spare.copy_(masks[start])
        j = start
        while source[j] != start:  # follow the cycle: each place takes its source before that is overwritten
            masks[j].copy_(masks[source[j]])
            placed[j] = True
            j = source[j]
        masks[j].copy_(spare)
        placed[j] = True


def arrange(buffer: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`buffer[index]` made inside `buffer` (bool (N, H, W) masks, N >= len(index)), without a second copy of huge
    masks: -> the leading view `buffer[:len(index)]`. An index may repeat a mask (a query kept with two classes):
    each mask first moves to its first place, then is copied to its other places, which the moves left free."""
    order = index.tolist()
    first: dict[int, int] = {}
    for j, q in enumerate(order):
        first.setdefault(q, j)
    source = [-1] * buffer.shape[0]
    for q, j in first.items():
        source[j] = q
    unused = iter(sorted(set(range(buffer.shape[0])) - set(first)))  # the masks no place takes, and free slots
    source = [q if q >= 0 else next(unused) for q in source]
    _permute(buffer, source)
    for j, q in enumerate(order):
        if first[q] != j:
            buffer[j].copy_(buffer[first[q]])
    return buffer[: len(order)]


def select(pred_logits: torch.Tensor, k: int):
    """(Q, K+1) logits -> scores (k,), labels (k,), query indices (k,) of the top-k (query, class) pairs, best first."""
    probs = pred_logits.float().softmax(-1)[:, :-1]  # drop "no object"
    num_classes = probs.shape[1]
    scores, flat = probs.flatten().topk(min(k, probs.numel()), sorted=True)
    return scores, flat % num_classes, flat // num_classes


def _final_order(scores: torch.Tensor, score_threshold: float) -> torch.Tensor:
    """Final scores (n,) -> the indices scoring at least `score_threshold`, best first (ties keep their order)."""
    order = scores.argsort(descending=True, stable=True)
    return order[scores[order] >= score_threshold] if score_threshold > 0 else order


def instances(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    padded: tuple[int, int],
    resized: tuple[int, int],
    original: tuple[int, int],
    k: int = 100,
    score_threshold: float = 0.0,
) -> dict[str, torch.Tensor]:
    """One image's network outputs -> its instances, best score first.

    pred_logits (Q, K+1) and pred_masks (Q, h8, w8) of the padded batch (`padded` = its H, W); `resized` is this
    image's size inside the padded batch, `original` the size the masks are returned at. Returns `masks` bool
    (n, H0, W0), `scores` (n,), `labels` (n,), `queries` (n,) with n <= k, every score >= `score_threshold`.

    The score is class probability × mask score, and the mask score (mean probability inside the binary mask) is at
    most 1, so a pair whose class probability is under the threshold can never reach it: those are dropped before any
    mask is upsampled. With threshold 0 this returns exactly the official top-k instances (the parity fixtures).

    Memory: the bool masks of the pairs kept by class probability (at most k × H0 × W0 bytes) plus a bounded float
    working set; for huge masks the returned `masks` is a leading view of that buffer (see `arrange`).
    """
    scores, labels, queries = select(pred_logits, k)  # (k,) each, class probability order
    if score_threshold > 0:
        keep = scores >= score_threshold
        scores, labels, queries = scores[keep], labels[keep], queries[keep]  # (n,)
    if queries.numel() == 0:  # nothing can reach the threshold: no mask is upsampled at all
        empty = torch.zeros((0, *original), dtype=torch.bool, device=pred_masks.device)
        return {"masks": empty, "scores": scores, "labels": labels, "queries": queries}
    unique, inverse = queries.unique(return_inverse=True)  # (u,) queries to upsample, (n,) back to pairs
    if _short_route(pred_masks, resized, original):  # bf16 logits: scored first, each kept mask made in its place
        resize = CellResize(pred_masks[unique], padded, resized, original)
        scores = scores * mask_scores(resize)[inverse]  # (n,)
        order = _final_order(scores, score_threshold)
        masks = ordered_masks(resize, inverse[order].tolist())
        return {"masks": masks, "scores": scores[order], "labels": labels[order], "queries": queries[order]}
    # huge masks: one bool buffer for all n pairs, the u masks made into its head and arranged in place
    huge = queries.numel() * original[0] * original[1] > TILED_ABOVE
    buffer = _new_masks((queries.numel(), *original), pred_masks.device) if huge else None
    head = None if buffer is None else buffer[: unique.numel()]
    binary, per_mask = binary_masks(pred_masks[unique], padded, resized, original, out=head)  # (u, H0, W0)
    scores = scores * per_mask[inverse]  # (n,)
    order = _final_order(scores, score_threshold)
    chosen = inverse[order]
    if buffer is None and not binary.is_cuda and chosen.numel() <= binary.shape[0]:
        buffer = binary  # each query once (the usual case): put the masks in order where they are, not in a copy
    masks = binary[chosen] if buffer is None else arrange(buffer, chosen)
    return {"masks": masks, "scores": scores[order], "labels": labels[order], "queries": queries[order]}


def instances_reference(pred_logits, pred_masks, padded, resized, original, k: int = 100) -> dict[str, torch.Tensor]:
    """The official order of operations on all Q masks (for tests and parity)."""
    full = _full_size(pred_masks.float(), padded, resized, original)  # (Q, H0, W0)
    scores, labels, queries = select(pred_logits, k)
    probs = full[queries].sigmoid()
    binary = (probs > 0.5).float()
    per_mask = (probs * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return {"masks": binary.bool(), "scores": scores * per_mask, "labels": labels, "queries": queries}
