"""The one box rule (`fastinst.boxes`): pixel-edge xyxy, and COCO's xywh from pycocotools' `toBbox` is the same box."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_util

from fastinst.boxes import mask_box, masks_to_boxes, xywh


def _masks() -> np.ndarray:
    masks = np.zeros((4, 10, 12), bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 9, 11] = True  # the last pixel: x1 / y1 are the image's width / height
    masks[3, 0, 0] = masks[3, 7, 4] = True  # two parts: the box holds both
    return masks


def test_boxes_from_masks():
    boxes = masks_to_boxes(_masks())
    assert boxes.dtype == np.float32
    assert boxes.tolist() == [[3, 2, 9, 5], [11, 9, 12, 10], [0, 0, 0, 0], [0, 0, 5, 8]]
    assert [mask_box(m) for m in _masks()] == [tuple(int(v) for v in b) for b in boxes]
    assert masks_to_boxes(np.zeros((0, 3, 4), bool)).shape == (0, 4)


def test_coco_xywh_is_pycocotools_tobbox():
    """The evaluator's `bbox` (pycocotools `toBbox` of the RLE) is `xywh` of the one rule's box: one rule, two
    representations."""
    rng = np.random.default_rng(0)
    masks = rng.random((6, 17, 23)) > 0.97
    masks[0] = False
    masks = np.concatenate([_masks().repeat(2, axis=1).repeat(2, axis=2)[:, :17, :23], masks])
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    expected = mask_util.toBbox(rles).tolist()
    assert [xywh(b) for b in masks_to_boxes(masks)] == expected
