"""The 80 COCO "thing" classes in contiguous order (the order FastInst's 80-way classifier uses) and their COCO ids.

Contiguous index `i` (the model's label) maps to COCO category id `COCO_CATEGORY_IDS[i]`: the ids run from 1 to 90 with
ten ids that the 2017 release never used, so a prediction must be mapped back before it is scored by pycocotools.
"""

from __future__ import annotations

COCO_NAMES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

_UNUSED_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})

COCO_CATEGORY_IDS: tuple[int, ...] = tuple(i for i in range(1, 91) if i not in _UNUSED_IDS)

assert len(COCO_NAMES) == len(COCO_CATEGORY_IDS) == 80


def coco_categories() -> list[dict]:
    """The `categories` list of a COCO annotation file: `[{"id": 1, "name": "person"}, ...]`."""
    return [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, COCO_NAMES, strict=True)]
