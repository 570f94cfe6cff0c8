"""What the `Predictor` returns for one image: `Results` (masks, scores, labels, class names; boxes, overlays, COCO
entries, JSON and `supervision` from them), and `found_again`, how two runs' results are compared.

Boxes follow `fastinst.boxes` (pixel-edge xyxy; COCO's xywh in `to_coco`).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..boxes import masks_to_boxes, xywh
from ..errors import FastInstError


@dataclass
class Results:
    """The instances found in one image, best score first. `masks` are at the image's own size."""

    image: np.ndarray  # uint8 (H, W, 3) RGB, as given
    masks: np.ndarray  # bool (N, H, W)
    scores: np.ndarray  # float32 (N,)
    labels: np.ndarray  # int64 (N,) contiguous class indices
    names: list[str]  # the model's class names, by contiguous class index (as Ultralytics' `names`)
    category_ids: list[int | None] | None = None  # contiguous index -> the dataset's own category id (None: not in it)
    path: Path | None = None
    source: str | None = None  # what the image came from when it is not a file: an image URL, a stream, a camera
    frame: int | None = None  # a video frame's index in its source (gaps: frames dropped to keep up with a live one)
    _boxes: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __getitem__(self, index) -> Results:
        """A subset (slice, index array or boolean mask) of the instances."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Results(
            self.image,
            self.masks[index],
            self.scores[index],
            self.labels[index],
            self.names,
            self.category_ids,
            self.path,
            self.source,
            self.frame,
        )

    @property
    def orig_img(self) -> np.ndarray:
        """The image as given (`image`; Ultralytics' name for it)."""
        return self.image

    @property
    def instance_names(self) -> list[str]:
        """Class name of each instance."""
        return [self.names[int(i)] for i in self.labels]

    @property
    def boxes(self) -> np.ndarray:
        """float32 (N, 4) xyxy boxes around the masks, pixel-edge (`fastinst.boxes`: x1 = last column + 1; zeros for
        an empty mask)."""
        if self._boxes is None:
            self._boxes = masks_to_boxes(self.masks)
        return self._boxes

    def filter(self, score_threshold: float) -> Results:
        """The instances scoring at least `score_threshold`."""
        return self[self.scores >= score_threshold]

    def plot(self, score_threshold: float = 0.0) -> np.ndarray:
        """uint8 RGB overlay of the instances scoring at least `score_threshold` (masks, boxes, class, score)."""
        from ..visualize import draw_instances

        return draw_instances(self.image, self.masks, self.labels, self.scores, list(self.names), score_threshold)

    def save(self, path: str | Path, score_threshold: float = 0.0) -> Path:
        """Write the overlay (`plot`) as an image file (format from the suffix, e.g. .png), atomically -> the path."""
        from .writers import save_image

        return save_image(self.plot(score_threshold), path)

    def to_coco(self, image_id: int, category_ids: list[int | None] | None = None) -> list[dict]:
        """COCO results entries: image_id, file_name, category_id (dataset ids), category_name, RLE segmentation,
        XYWH bbox, score. Instances of a class whose id is None (a class the dataset lacks) are left out."""

        ids = list(category_ids or self.category_ids or range(1, len(self.names) + 1))
        keep: list[tuple[int, int]] = []  # (instance, its category id)
        for k in range(len(self)):
            cid = ids[int(self.labels[k])]
            if cid is not None:
                keep.append((k, cid))
        if not keep:
            return []
        from ..data.masks import masks_to_rles

        rles = masks_to_rles(self.masks[[k for k, _ in keep]])
        file_name = str(self.path) if self.path is not None else (self.source or "")
        frame = {} if self.frame is None else {"frame": int(self.frame)}
        out = []
        for (k, cid), rle in zip(keep, rles, strict=True):
            label = int(self.labels[k])
            out.append(
                {
                    "image_id": int(image_id),
                    "file_name": file_name,
                    "category_id": int(cid),
                    "category_name": str(self.names[label]),
                    "segmentation": rle,
                    "bbox": xywh(self.boxes[k]),
                    "score": float(self.scores[k]),
                    **frame,
                }
            )
        return out

    def summary(self, decimals: int = 5, masks: bool = True) -> list[dict]:
        """One dict per instance, best first, for logs and JSON (the keys Ultralytics' `summary()` uses where they
        mean the same): `name` (class name), `class` (contiguous class index), `confidence` (score), `box` ({x1, y1,
        x2, y2} in pixels, around the mask) and, with `masks`, `segmentation`: the mask as COCO RLE ({size: [H, W],
        counts: str}; `pycocotools.mask.decode` reads it). Values rounded to `decimals`."""
        rles: list[dict] = []
        if masks and len(self):
            from ..data.masks import masks_to_rles

            rles = masks_to_rles(self.masks)
        out = []
        for k in range(len(self)):
            x1, y1, x2, y2 = (round(float(v), decimals) for v in self.boxes[k])
            item: dict[str, Any] = {
                "name": self.names[int(self.labels[k])],
                "class": int(self.labels[k]),
                "confidence": round(float(self.scores[k]), decimals),
                "box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
            }
            if masks:
                item["segmentation"] = rles[k]
            out.append(item)
        return out

    def to_json(self, decimals: int = 5, masks: bool = True, indent: int | None = None) -> str:
        """`summary()` as a JSON string (a list, one object per instance)."""
        return json.dumps(self.summary(decimals, masks), indent=indent)

    def to_supervision(self):
        """The instances as `supervision.Detections` (xyxy boxes, bool masks, confidence, class_id, and the class
        names in `data["class_name"]`, which supervision's annotators label with). Needs `pip install supervision`."""
        try:
            sv = importlib.import_module("supervision")
        except ImportError:
            raise FastInstError("to_supervision needs the supervision package: pip install supervision") from None
        return sv.Detections(
            xyxy=self.boxes.astype(np.float32),
            mask=self.masks,
            confidence=self.scores,
            class_id=self.labels,
            data={"class_name": np.array(self.instance_names, dtype=str)},
        )


def found_again(reference: Results, other: Results, iou: float = 0.9) -> int:
    """How many of `reference`'s instances `other` finds again: one of the same class with mask IoU >= `iou` (how
    a faster precision or backend is checked against fp32 PyTorch)."""
    hits = 0
    for mask, label in zip(reference.masks, reference.labels, strict=True):
        same = other.masks[other.labels == label]  # (m, H, W)
        if len(same):
            inter = (same & mask).reshape(len(same), -1).sum(1)
            union = (same | mask).reshape(len(same), -1).sum(1)
            hits += float((inter / np.maximum(union, 1)).max()) >= iou
    return hits
