"""One image -> its instances in compact form, with memory that does not grow with the number of instances.

`fastinst app` runs this instead of `Predictor.predict_batch`, whose `Results` hold every mask at full size (100
instances of a 40-megapixel photo are 4 GB of bool masks, more in the overlay and the RLE encoding). Here:

* `find_instances`: the network once (`network_outputs`: the same resize, normalise + pad and network as
  `FastInst.detect` / `ExportedModel.detect`), then the official post-processing (`fastinst.model.postprocess`:
  `select` the top-k (query, class) pairs, `binary_masks` / `binary_masks_tiled` for each kept query's mask) one
  mask at a time: each full-size bool mask gives its box, area and COCO RLE and is dropped before the next is made.
  Scores, order and masks are those of `Predictor.predict_batch` (bit for bit below `TILED_PIXELS`; above it the
  column-tiled masks are the same and the mask score's sum may differ in its last bits).
* `draw_overlay`: the overlay drawn into the image itself, worst instance first, each mask decoded from its RLE and
  blended inside its box only (`Results.plot`'s colours, 2-px outline and labels; each instance is rounded to uint8
  after its blend, so a pixel under several masks may differ from `Results.plot` by one level).
* `write_png`: a PNG written band by band through zlib, without a second full-size copy of the image.

Peak memory of one image: the decoded image (3 bytes a pixel), one bool mask (1 byte a pixel) and its Fortran-order
copy for the RLE encoder (1 byte a pixel), one float tile (`TILE_ELEMENTS` × 4 bytes) and the network's activations.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

TILED_PIXELS = 1 << 22  # images over 4 megapixels get their masks in column tiles
TILE_ELEMENTS = 1 << 22  # float32 values of one tile: 16 MiB
_BAND_BYTES = 16 << 20  # rows of the image blended or PNG-encoded at a time


@dataclass
class Instance:
    """One found instance: contiguous class index, score, box (x0, y0, x1, y1 in pixels, x1/y1 one past the last
    column/row; zeros for an empty mask), mask area in pixels, the mask as COCO RLE ({size: [H, W], counts}: column
    by column) and as the RLE of its transpose (row by row, which `draw_overlay` decodes without a transposing copy)."""

    label: int
    score: float
    box: tuple[int, int, int, int]
    area: int
    rle: dict[str, Any]
    rows_rle: dict[str, Any]


def _precision(predictor: Any):
    """The predictor's precision around the network, as `Predictor.detect` runs it."""
    if predictor.dtype in ("bf16", "fp16") and isinstance(predictor.model, torch.nn.Module):
        low = torch.float16 if predictor.dtype == "fp16" else torch.bfloat16
        return torch.autocast(device_type=predictor.device.type, dtype=low)
    return contextlib.nullcontext()


def network_outputs(predictor: Any, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    """RGB uint8 (H0, W0, 3) -> pred_logits (Q, K+1), pred_masks (Q, Hp/8, Wp/8), the padded (Hp, Wp) and the
    resized (h, w) size: `FastInst.detect`'s steps up to its post-processing, for a FastInst or an exported model."""
    from ..model.preprocess import to_model_input

    model = predictor.model
    cfg = model.cfg
    item = to_model_input(np.ascontiguousarray(image), cfg.input.min_size_test, cfg.input.max_size_test)
    with torch.inference_mode(), _precision(predictor):
        if getattr(model, "training", False):
            model.eval()
        images, sizes = model.preprocess([item])  # FastInst or an exported runtime (fastinst.runtimes): one contract
        logits, masks = model.forward_raw(images)
    padded = (int(images.shape[-2]), int(images.shape[-1]))
    # an exported bf16 network's mask logits in bf16, as its own post-processing takes them (`ExportedModel.__call__`)
    mask_dtype = getattr(model, "mask_dtype", masks.dtype)
    return logits[0].float(), masks[0].to(mask_dtype), padded, tuple(sizes[0])


def one_mask(logits: torch.Tensor, padded: tuple, resized: tuple, original: tuple) -> tuple[np.ndarray, torch.Tensor]:
    """(1, h8, w8) logits -> the bool (H0, W0) mask and its mask score (1,), as `postprocess.instances` makes them;
    a big image in column tiles of `TILE_ELEMENTS` values."""
    from ..model.postprocess import binary_masks, binary_masks_tiled

    height, width = original
    with torch.inference_mode():
        if height * width > TILED_PIXELS and height >= resized[0] and width >= resized[1]:
            binary, score = binary_masks_tiled(logits.float(), padded, resized, original, elements=TILE_ELEMENTS)
        else:
            binary, score = binary_masks(logits, padded, resized, original)
        return binary[0].cpu().numpy(), score.float().cpu()


def box_and_area(mask: np.ndarray) -> tuple[tuple[int, int, int, int], int]:
    """A bool (H, W) mask -> its box (`fastinst.boxes.mask_box`: x1/y1 one past the last column/row, zeros when
    empty) and its area."""
    from ..boxes import mask_box

    x0, y0, x1, y1 = mask_box(mask)
    return (x0, y0, x1, y1), int(np.count_nonzero(mask[y0:y1, x0:x1]))


def encode(mask: np.ndarray) -> dict[str, Any]:
    """A bool (H, W) mask -> compressed COCO RLE with a str `counts` (one Fortran-order copy of a C-order mask;
    `encode(mask.T)` of a C-order mask needs none)."""
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.view(np.uint8)[:, :, None]))[0]
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE -> bool (H, W) mask (a Fortran-order array; `decode(encode(m.T)).T` is C-order)."""
    from pycocotools import mask as mask_util

    return mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).view(bool)


def find_instances(predictor: Any, image: np.ndarray, score_threshold: float, max_dets: int) -> list[Instance]:
    """The instances of one image, best first, score >= `score_threshold`, at most `max_dets`: what
    `predictor.predict_batch([image], None, score_threshold, max_dets)` finds, one mask in memory at a time."""
    from ..model.postprocess import select

    logits, masks, padded, resized = network_outputs(predictor, image)
    original = (int(image.shape[0]), int(image.shape[1]))
    scores, labels, queries = select(logits, max_dets)  # (k,) each, class probability order
    if score_threshold > 0:
        keep = scores >= score_threshold
        scores, labels, queries = scores[keep], labels[keep], queries[keep]
    if queries.numel() == 0:
        return []
    unique, inverse = queries.unique(return_inverse=True)  # (u,) masks to make, (n,) back to the pairs
    made: list[tuple[tuple[int, int, int, int], int, dict[str, Any], dict[str, Any]]] = []
    mask_scores = torch.empty(unique.numel(), dtype=torch.float32)
    for j, q in enumerate(unique.tolist()):
        mask, mask_score = one_mask(masks[q : q + 1], padded, resized, original)  # bf16 logits: the short route
        mask_scores[j] = mask_score[0]
        box, area = box_and_area(mask)
        made.append((box, area, encode(mask), encode(mask.T)))
        del mask
    inverse, scores, labels = inverse.cpu(), scores.cpu(), labels.cpu()
    scores = scores * mask_scores[inverse]  # (n,), as postprocess.instances
    order = scores.argsort(descending=True, stable=True)
    order = order[scores[order] >= score_threshold] if score_threshold > 0 else order
    found = []
    for i in order.tolist():
        found.append(Instance(int(labels[i]), float(scores[i]), *made[int(inverse[i])]))
    return found


def draw_overlay(image: np.ndarray, found: list[Instance], names: list[str], alpha: float = 0.5) -> None:
    """Draw `found` (best first) into `image` (uint8 H×W×3, in place) as `Results.plot` does: instance i in
    `instance_colour(i)`, the best on top, a 2-px darker outline, a "name 0.87" label per instance."""
    from PIL import Image, ImageDraw

    from ..visualize import draw_label, instance_colour, label_font, label_place, label_text

    h, w = image.shape[:2]
    levels = np.arange(256, dtype=np.float32)[:, None]
    for i in reversed(range(len(found))):  # the best instance is drawn last, on top
        inst = found[i]
        if inst.area == 0:
            continue
        x0, y0, x1, y1 = inst.box
        crop = decode(inst.rows_rle).T[y0:y1, x0:x1]  # C-order
        region = image[y0:y1, x0:x1]
        rgb = np.array(instance_colour(i), np.float32)
        blend = np.round(levels * (1.0 - alpha) + rgb * alpha).astype(np.uint8)  # (256, 3): old value -> new
        edge_rgb = np.round(rgb * 0.6).astype(np.uint8)
        rows = max(1, _BAND_BYTES // max(1, (x1 - x0) * 3))
        for r0 in range(0, y1 - y0, rows):
            r1 = min(y1 - y0, r0 + rows)
            c0, c1 = max(0, r0 - 2), min(y1 - y0, r1 + 2)  # rows of context for the outline
            inside = crop[r0:r1]
            edge = mask_edges(crop[c0:c1])[r0 - c0 : r1 - c0]
            band = region[r0:r1]
            for c in range(3):
                channel = band[..., c]
                np.copyto(channel, blend[:, c][channel], where=inside)
                np.copyto(channel, edge_rgb[c], where=edge)
    font = label_font(max(10, min(24, round(min(h, w) / 40))))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed: list[tuple[int, int, int, int, int, str, int, int]] = []  # x0, y0, x1, y1, i, text, left, top
    for i, inst in enumerate(found):  # the best label is placed first; the others slide below placed ones
        if inst.area == 0:
            continue
        text = label_text(inst.label, inst.score, names)
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        tw, th = int(right - left + 4), int(bottom - top + 4)
        x0, y0 = label_place(inst.box[0], inst.box[1], tw, th, (h, w), placed)
        placed.append((x0, y0, x0 + tw, y0 + th, i, text, int(left), int(top)))
    for x0, y0, x1, y1, i, text, left, top in reversed(placed):  # the best label on top
        draw_label(image, (x0, y0, x1 - 1, y1 - 1), instance_colour(i), text, font, (2 - left, 2 - top))


def mask_edges(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """`fastinst.visualize.mask_edges` (the mask minus its `width`-fold 3x3 erosion, outside = background) in fewer
    passes: a `width`-fold 3x3 erosion is one (2 width + 1)-square erosion, made as a row pass and a column pass."""
    h, w = mask.shape
    k = 2 * width + 1
    eroded = np.zeros_like(mask)
    if h >= k and w >= k:
        rows = mask[:, : w - k + 1].copy()
        for s in range(1, k):
            rows &= mask[:, s : w - k + 1 + s]
        both = rows[: h - k + 1].copy()
        for s in range(1, k):
            both &= rows[s : h - k + 1 + s]
        eroded[width : h - width, width : w - width] = both
    return mask & ~eroded


def write_png(path: Path, image: np.ndarray, level: int | None = None) -> int:
    """uint8 (H, W, 3) RGB -> an 8-bit RGB PNG file at `path`, encoded a band of rows at a time (each row with the
    PNG "Sub" filter; zlib `level`, by default 3, or 1 over `TILED_PIXELS`: twice as fast, 8% larger) -> the
    file's size in bytes."""
    h, w = image.shape[:2]
    level = (1 if h * w > TILED_PIXELS else 3) if level is None else level
    rows = max(1, _BAND_BYTES // (3 * w + 1))
    size = 0

    def chunk(f, kind: bytes, data: bytes) -> None:
        nonlocal size
        f.write(struct.pack(">I", len(data)) + kind)
        f.write(data)
        f.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))
        size += 12 + len(data)

    z = zlib.compressobj(level)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        size += 8
        chunk(f, b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))  # 8 bits, RGB, deflate, filter 0, no interlace
        for r0 in range(0, h, rows):
            band = image[r0 : r0 + rows].reshape(-1, 3 * w)
            raw = np.empty((band.shape[0], 3 * w + 1), np.uint8)
            raw[:, 0] = 1  # Sub: each byte minus the byte of the pixel to its left (mod 256)
            raw[:, 1:4] = band[:, :3]
            np.subtract(band[:, 3:], band[:, :-3], out=raw[:, 4:])
            data = z.compress(raw.data)
            if data:
                chunk(f, b"IDAT", data)
        chunk(f, b"IDAT", z.flush())
        chunk(f, b"IEND", b"")
    return size


def coco_entries(
    found: list[Instance], names: list[str], category_ids: list[int | None] | None, image_id: int, file_name: str
) -> list[dict[str, Any]]:
    """COCO results entries as `Results.to_coco` writes them (the model's category ids; a class whose id is None is
    left out): image_id, file_name, category_id, category_name, RLE segmentation, XYWH bbox, score."""
    ids = list(category_ids or range(1, len(names) + 1))
    out = []
    for inst in found:
        cid = ids[inst.label]
        if cid is None:
            continue
        x0, y0, x1, y1 = (float(v) for v in inst.box)
        out.append(
            {
                "image_id": int(image_id),
                "file_name": file_name,
                "category_id": int(cid),
                "category_name": str(names[inst.label]),
                "segmentation": inst.rle,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": inst.score,
            }
        )
    return out
