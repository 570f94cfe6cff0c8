"""Instance inference (SPEC §2.6): top-k (query, class) pairs, score = class prob × mean mask prob, masks at full size.

The official code upsamples all Q mask logits to the padded size and then to the original size. Both resizes act on
each query independently, so `instances` runs them only for the queries the top-k — and the score threshold — keep:
same numbers, less work. It is the one post-processing of every backend (PyTorch, ONNX Runtime).
`instances_reference` is the straightforward official order, kept for tests and benchmarks.

Mask logits that come out of a bf16 network (`pred_masks.dtype == torch.bfloat16`: `--dtype bf16`, the default on
CPUs with bf16 hardware; OpenVINO in bf16) take a shorter route on a CPU (`binary_masks_bf16`): one resize instead of
two, the threshold on the logit, the mask score from every other row: two full-size passes per mask instead of
five. Its masks and scores agree with the official route's (IoU >= 0.99, scores within 1e-2) where the bf16 network
already moves them more; fp32 logits keep the official order, bit for bit.

Huge images (a 10000x10000 photo) are post-processed in column tiles, one mask at a time, and their bool masks are
made in one buffer and put in score order inside it: memory holds the n masks returned (n × H0 × W0 bytes) plus one
float tile (`TILE_ELEMENTS`), not float masks at full size (800 MB a pair at 10000x10000) and a second copy of the
bool masks. See `binary_masks_tiled` and `arrange`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def _one_resize(
    logits: torch.Tensor,
    padded: tuple[int, int],
    resized: tuple[int, int],
    original: tuple[int, int],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, h8, w8) -> (n, H0, W0) in one bilinear resize of the cells that cover the image (`_full_size` makes two):
    the same pixel centres, one interpolation instead of two in a row, which smooths a little less (masks agree
    with `_full_size`'s to IoU >= 0.99). `padded` is not needed (the crop is in the cells), only taken so that the two
    routes have one signature. `out`: a float (1, n, H0, W0) tensor to write into."""
    cells = (-(-resized[0] // 8), -(-resized[1] // 8))  # the stride-8 cells the image covers (the rest is padding)
    # output pixel y samples cell (y + 0.5) * resized / (8 * H0) - 0.5, as the two resizes' pixel centres compose
    args = (logits[:, : cells[0], : cells[1]].unsqueeze(0), list(original), False)  # (1, n, ch, cw)
    scales = (8 * original[0] / resized[0], 8 * original[1] / resized[1])  # original pixels per cell
    if out is None:
        return torch.ops.aten.upsample_bilinear2d.default(*args, *scales)[0]
    return torch.ops.aten.upsample_bilinear2d.out(*args, *scales, out=out)[0]  # (n, H0, W0)


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
    if step * original[0] * original[1] > TILED_ABOVE and _tileable(resized, original):
        return binary_masks_tiled(logits.float(), padded, resized, original, out=out)
    if logits.dtype == torch.bfloat16 and not logits.is_cuda:
        return binary_masks_bf16(logits, padded, resized, original, out=out)
    logits = logits.float()
    if n == 1 and step == 2:  # a lone mask's sum would be split between threads: do it as one of a pair
        binary, scores = binary_masks(logits.expand(2, -1, -1), padded, resized, original)
        return (binary[:1] if out is None else out.copy_(binary[:1])), scores[:1]
    binary = torch.empty((n, *original), dtype=torch.bool, device=logits.device) if out is None else out
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


SCORE_STRIDE = 2
"""`binary_masks_bf16` estimates a mask score on every `SCORE_STRIDE`-th row of the full-size mask (whole rows: a
strided column read would cost more than the sigmoid it saves)."""

EXACT_SCORE_BELOW = 256
"""... and on every pixel when fewer than this many of the sampled pixels are inside the mask (small objects)."""


def binary_masks_bf16(
    logits: torch.Tensor,
    padded: tuple[int, int],
    resized: tuple[int, int],
    original: tuple[int, int],
    out: torch.Tensor | None = None,
    step: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`binary_masks` for the mask logits of a bf16 network on a CPU: (u, h8, w8) -> bool (u, H0, W0), scores (u,).

    The official route makes five passes over each float mask at full size (two resizes, sigmoid, threshold, sums).
    This one makes two: one resize (`_one_resize`) and the threshold, taken on the logit (> 0, which is probability
    > 0.5). The mask score, the mean probability inside the mask, is the mean over every `SCORE_STRIDE`-th row of
    those logits (half the pixels: within ~1e-3 of the mean over all of them), or over all pixels for a mask with
    fewer than `EXACT_SCORE_BELOW` of the sampled pixels inside. Masks agree with the official route's to IoU >= 0.99
    (the bf16 network itself moves them more); tests/model/test_postprocess.py. The float masks of a step go into one
    buffer reused for every step (a fresh one per step costs its page faults each time)."""
    n = logits.shape[0]
    logits = logits.float()
    binary = torch.empty((n, *original), dtype=torch.bool) if out is None else out
    scores = torch.empty(n, dtype=torch.float32)
    buffer = torch.empty((1, min(step, n), *original), dtype=torch.float32)
    sampled = torch.empty((min(step, n), -(-original[0] // SCORE_STRIDE), original[1]), dtype=torch.float32)
    for s in range(0, n, step):
        k = min(step, n - s)
        full = _one_resize(logits[s : s + k], padded, resized, original, out=buffer[:, :k])  # (k, H0, W0)
        masks = torch.gt(full, 0.0, out=binary[s : s + k])  # logit > 0 = probability > 0.5
        probs = torch.sigmoid(full[:, ::SCORE_STRIDE], out=sampled[:k])  # (k, H0 / 2, W0)
        inside = F.threshold(probs, 0.5, 0.0, inplace=True)  # probability inside the mask, 0 outside
        area = masks[:, ::SCORE_STRIDE].view(torch.uint8).sum((1, 2), dtype=torch.int32)  # the sampled rows' pixels
        scores[s : s + k] = inside.sum((1, 2)) / (area + 1e-6)
        for j in (area < EXACT_SCORE_BELOW).nonzero().flatten().tolist():  # small masks: every pixel counts
            p = full[j].sigmoid()
            inside = p > 0.5
            scores[s + j] = (p * inside).sum() / (inside.sum() + 1e-6)
    return binary, scores


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
    binary = torch.empty((n, height, width), dtype=torch.bool, device=logits.device) if out is None else out
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
    # huge masks: one bool buffer for all n pairs, the u masks made into its head and arranged in place
    huge = queries.numel() * original[0] * original[1] > TILED_ABOVE
    buffer = torch.empty((queries.numel(), *original), dtype=torch.bool, device=pred_masks.device) if huge else None
    head = None if buffer is None else buffer[: unique.numel()]
    binary, mask_scores = binary_masks(pred_masks[unique], padded, resized, original, out=head)  # (u, H0, W0)
    scores = scores * mask_scores[inverse]  # (n,)
    order = scores.argsort(descending=True, stable=True)
    order = order[scores[order] >= score_threshold] if score_threshold > 0 else order
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
    mask_scores = (probs * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return {"masks": binary.bool(), "scores": scores * mask_scores, "labels": labels, "queries": queries}
