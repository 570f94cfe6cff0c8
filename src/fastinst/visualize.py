"""Drawing predictions on images and plotting training curves.

`draw_instances` blends each instance's mask in its own colour, outlines it with a 2-px contour and writes a
``"name 0.87"`` label on a filled box; `plot_training_curves` turns a ``metrics.jsonl`` into a PNG.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .boxes import mask_box
from .errors import FastInstError

__all__ = [
    "PALETTE",
    "draw_instances",
    "draw_label",
    "instance_colour",
    "label_font",
    "label_text",
    "mask_edges",
    "plot_training_curves",
]

# Twenty well-separated, saturated colours (RGB); instance i gets PALETTE[i % 20].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 200, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (170, 220, 50),
    (250, 160, 180),
    (0, 128, 128),
    (190, 140, 255),
    (170, 110, 40),
    (255, 240, 140),
    (128, 0, 0),
    (120, 255, 170),
    (128, 128, 0),
    (255, 210, 170),
    (0, 0, 128),
    (255, 120, 90),
)


def instance_colour(index: int) -> tuple[int, int, int]:
    """The palette colour of the `index`-th instance (deterministic, cycles after 20)."""
    return PALETTE[index % len(PALETTE)]


def _erode(mask: np.ndarray) -> np.ndarray:
    """One 3×3 binary erosion; pixels outside the image count as background."""
    p = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    out = mask.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out &= p[dy : dy + h, dx : dx + w]
    return out


def mask_edges(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The inner boundary band of a bool mask, `width` pixels thick (mask minus its `width`-fold erosion)."""
    inner = mask
    for _ in range(width):
        inner = _erode(inner)
    return mask & ~inner


def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def label_text(label: int | None, score: float | None, names: Sequence[str] | None) -> str:
    if label is None:
        text = ""
    elif names is not None and 0 <= label < len(names):
        text = str(names[label])
    else:
        text = f"class {label}"
    if score is not None:
        text = f"{text} {score:.2f}".strip()
    return text


def draw_instances(
    image: np.ndarray,
    masks: Any,
    labels: Sequence[int] | np.ndarray | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    names: Sequence[str] | None = None,
    score_threshold: float = 0.0,
    alpha: float = 0.5,
    contour_width: int = 2,
) -> np.ndarray:
    """Draw instance masks on `image` (uint8 H×W×3 RGB) and return a new uint8 RGB array.

    `masks` is bool (N, H, W) (numpy or torch); `labels` contiguous class ids and `scores` floats, both
    length N or None; `names[label]` is shown when given (else ``"class <id>"``). Instances scoring below
    `score_threshold` are skipped; instance i is drawn in `instance_colour(i)`, the best-scoring one last (on top),
    and labels that would cover one another slide below the labels of better instances.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 H×W×3 RGB, got {img.dtype} {tuple(img.shape)}")
    m = masks.detach().cpu().numpy() if hasattr(masks, "detach") else np.asarray(masks)
    m = m.reshape(0, *img.shape[:2]) if m.size == 0 else m
    if m.ndim != 3 or m.shape[1:] != img.shape[:2]:
        raise ValueError(f"masks must be (N, {img.shape[0]}, {img.shape[1]}), got {tuple(m.shape)}")
    m = m if m.dtype == bool else m.astype(bool)  # (no copy of bool masks: 16 masks of 10000² are 1.6 GB)
    n = m.shape[0]
    lab = None if labels is None else [int(v) for v in np.asarray(labels).reshape(-1)]
    sco = None if scores is None else [float(v) for v in np.asarray(scores, dtype=np.float64).reshape(-1)]
    for what, seq in (("labels", lab), ("scores", sco)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{len(seq)} {what} for {n} masks")
    keep = [i for i in range(n) if sco is None or sco[i] >= score_threshold]
    ranked = sorted(keep, key=lambda i: -sco[i]) if sco is not None else keep  # best first
    h, w = img.shape[:2]
    out = img.copy()
    _blend_masks(out, m, ranked, alpha, contour_width)

    font = label_font(max(10, min(24, round(min(h, w) / 40))))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed: list[tuple[int, int, int, int, int, str, int, int]] = []  # x0, y0, x1, y1, i, text, left, top
    for i in ranked:  # the best label gets its place first; the others slide below labels already placed
        text = label_text(None if lab is None else lab[i], None if sco is None else sco[i], names)
        if not text:
            continue
        left_col, top_row, right_col, _ = mask_box(m[i])  # the label goes at the box's top left corner
        if right_col == 0:  # an empty mask
            continue
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        x0, y0 = label_place(left_col, top_row, tw, th, (h, w), placed)
        placed.append((x0, int(y0), int(x0 + tw), int(y0 + th), i, text, int(left), int(top)))
    for x0, y0, x1, y1, i, text, left, top in reversed(placed):  # the best label on top
        draw_label(out, (x0, y0, x1 - 1, y1 - 1), instance_colour(i), text, font, (2 - left, 2 - top))
    return out


def label_place(left_col, top_row, tw, th, size: tuple[int, int], placed: list) -> tuple[int, Any]:
    """Where a `tw` x `th` label of a mask whose box starts at (`left_col`, `top_row`) goes in an image of `size`
    (h, w): above the box when there is room, else just inside it, inside the image, and slid below any label in
    `placed` ((x0, y0, x1, y1, ...) each) it would cover while there is room below."""
    h, w = size
    x0 = int(min(max(left_col, 0), max(w - tw, 0)))
    y0 = top_row - th
    y0 = top_row if y0 < 0 else y0
    y0 = min(y0, max(h - th, 0))
    for _ in range(len(placed)):
        hit = next((b for b in placed if x0 < b[2] and b[0] < x0 + tw and y0 < b[3] and b[1] < y0 + th), None)
        if hit is None or hit[3] + th > h:
            break
        y0 = hit[3]
    return x0, y0


def draw_label(out: np.ndarray, box: tuple[int, int, int, int], colour, text: str, font, offset) -> None:
    """Fill `box` (x0, y0, x1, y1 inclusive, image coordinates) of `out` with `colour` and write `text` at `offset`
    from its corner, in black or white by the colour's luminance; drawn on a patch of the box alone (a whole-image
    PIL copy would cost another H×W×3 bytes on huge images)."""
    h, w = out.shape[:2]
    x0, y0, x1, y1 = box
    patch = Image.fromarray(out[y0 : min(y1 + 1, h), x0 : min(x1 + 1, w)])
    draw = ImageDraw.Draw(patch)
    draw.rectangle((0, 0, x1 - x0, y1 - y0), fill=colour)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    draw.text(offset, text, font=font, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255))
    out[y0 : min(y1 + 1, h), x0 : min(x1 + 1, w)] = np.asarray(patch)


# Rows of the image blended at a time: the float working copy of one band stays near 64 MB whatever the image size.
_BAND_BYTES = 64 << 20


def _blend_masks(out: np.ndarray, masks: np.ndarray, ranked: list[int], alpha: float, contour_width: int) -> None:
    """Blend each mask in `ranked` (worst first, the best on top) into `out` (uint8 H×W×3, in place) with its
    `contour_width`-pixel outline, band by band: the result is the same as blending the whole image in float32 and
    rounding once, since every pixel's arithmetic is the same; a band's outlines use `contour_width` rows of context
    above and below it, which is as far as the erosion in `mask_edges` reaches."""
    h, w = out.shape[:2]
    rows = max(1, _BAND_BYTES // max(1, w * 3 * 4))
    colours = {i: np.array(instance_colour(i), np.float32) for i in ranked}
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        c0, c1 = max(0, r0 - contour_width), min(h, r1 + contour_width)  # rows with context for the outline
        band = out[r0:r1].astype(np.float32)
        for i in reversed(ranked):  # the best instance is drawn last, on top
            inside = masks[i, r0:r1]
            if not inside.any():
                continue
            rgb = colours[i]
            band[inside] = band[inside] * (1.0 - alpha) + rgb * alpha
            band[mask_edges(masks[i, c0:c1], contour_width)[r0 - c0 : r1 - c0]] = rgb * 0.6  # darker, opaque outline
        out[r0:r1] = np.clip(np.round(band), 0, 255).astype(np.uint8)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FastInstError(f"{path}: metrics file not found")
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue  # e.g. a half-written last line after a crash
        if isinstance(row, dict) and isinstance(row.get("iter"), (int, float)):
            rows.append(row)
    if not rows:
        raise FastInstError(f"{path}: no metrics records (JSON lines with an 'iter' key)")
    return rows


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(r["iter"]))
            ys.append(float(v))
    return xs, ys


def plot_training_curves(metrics_jsonl_path: str | Path, out_png: str | Path) -> Path:
    """Plot losses (``total_loss`` and every ``loss_*``), ``lr`` and, if present, ``AP``/``AP50``/``AP75``
    against ``iter`` from a JSON-lines metrics file into `out_png`. Returns the PNG path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    src, dst = Path(metrics_jsonl_path), Path(out_png)
    rows = _read_metrics(src)
    keys = sorted({k for r in rows for k in r})
    loss_keys = (["total_loss"] if "total_loss" in keys else []) + [k for k in keys if k.startswith("loss_")]
    ap_keys = [k for k in ("AP", "AP50", "AP75") if _series(rows, k)[0]]
    panels = [("losses", loss_keys), ("learning rate", ["lr"] if _series(rows, "lr")[0] else [])]
    if ap_keys:
        panels.append(("mask AP", ap_keys))
    panels = [(t, ks) for t, ks in panels if ks]
    if not panels:
        raise FastInstError(f"{src}: no total_loss, loss_*, lr or AP values to plot")

    fig = Figure(figsize=(6.5 * len(panels), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    for j, (title, ks) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), j + 1)
        for k in ks:
            xs, ys = _series(rows, k)
            if not xs:
                continue
            thick = k in ("total_loss", "AP")
            ax.plot(xs, ys, label=k, linewidth=2.0 if thick else 1.0, marker="o" if title == "mask AP" else None)
        if title == "losses" and all(y > 0 for k in ks for y in _series(rows, k)[1]):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        if len(ks) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    dst.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dst)
    return dst
