"""The one rule for the box around a mask, for every place that shows or writes one.

A box is `(x0, y0, x1, y1)` in pixel-edge coordinates: x0 / y0 are the first column / row the mask covers, x1 / y1
one past the last (so `x1 - x0` is the width in pixels and a one-pixel mask at (x, y) is `(x, y, x + 1, y + 1)`);
an empty mask's box is all zeros. `Results.boxes`, `Results.summary()`, the overlay labels (`fastinst.visualize`),
the low-memory path (`fastinst.engine.compact`) and the web demo use it.

COCO writes the same box in another representation, `[x, y, width, height]` (`xywh`): COCO result files' `bbox`
(`Results.to_coco`). pycocotools' `mask.toBbox` of a mask's RLE, which the evaluator uses for its `bbox` fields
because it reads the box off the RLE without the mask, gives exactly `xywh(mask_box(mask))`
(tests/test_boxes.py checks it): two representations of one rule.
"""

from __future__ import annotations

import numpy as np


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """bool (H, W) -> (x0, y0, x1, y1), x1 / y1 one past the last column / row; (0, 0, 0, 0) for an empty mask.
    Reads the mask once per axis (`any`), never lists its pixels."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    if not len(rows):
        return (0, 0, 0, 0)
    cols = np.flatnonzero(np.any(mask, axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """bool (N, H, W) -> float32 (N, 4) boxes by `mask_box` (pixel-edge xyxy; zeros for an empty mask)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for k, mask in enumerate(masks):
        boxes[k] = mask_box(mask)
    return boxes


def xywh(box) -> list[float]:
    """A pixel-edge (x0, y0, x1, y1) box as COCO's `[x, y, width, height]` (a results file's `bbox`)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]
