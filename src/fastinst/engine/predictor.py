"""Inference on images: `Predictor` turns arrays / PIL images / paths / tensors into `Results`.

    predictor = fastinst.load("fastinst-d1-r50", weights="official")          # or Predictor(model, names)
    for r in predictor.predict(["a.jpg", "b.jpg"], score_threshold=0.3):
        print(r.names, r.scores, r.boxes)                                     # per instance
        Image.fromarray(r.plot()).save("a_overlay.png")

Pre- and post-processing are exactly the model's: `fastinst.model.preprocess.to_model_input` with the variant's test
size, then `model(batch)` in eval mode, which returns masks at each image's original size. FastInst always returns its
100 best (query, class) pairs, most of them with scores near zero: filter them with `score_threshold`.
"""

from __future__ import annotations

import contextlib
import glob
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import FastInstError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------------


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """bool (N, H, W) -> float32 (N, 4) xyxy boxes in pixel-edge coordinates (x1 = last column + 1); empty -> zeros."""
    n, h, w = masks.shape
    boxes = np.zeros((n, 4), np.float32)
    if n == 0:
        return boxes
    rows, cols = np.any(masks, axis=2), np.any(masks, axis=1)  # (N, H), (N, W)
    has = np.any(rows, axis=1)
    boxes[:, 0] = cols.argmax(1)
    boxes[:, 1] = rows.argmax(1)
    boxes[:, 2] = w - cols[:, ::-1].argmax(1)
    boxes[:, 3] = h - rows[:, ::-1].argmax(1)
    boxes[~has] = 0
    return boxes


@dataclass
class Results:
    """The instances found in one image, best score first. `masks` are at the image's own size."""

    image: np.ndarray  # uint8 (H, W, 3) RGB, as given
    masks: np.ndarray  # bool (N, H, W)
    scores: np.ndarray  # float32 (N,)
    labels: np.ndarray  # int64 (N,) contiguous class indices
    classes: list[str]  # every class name, in contiguous order
    category_ids: list[int] | None = None  # contiguous index -> the dataset's own category id
    path: Path | None = None
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
            self.classes,
            self.category_ids,
            self.path,
        )

    @property
    def names(self) -> list[str]:
        """Class name of each instance."""
        return [self.classes[int(i)] for i in self.labels]

    @property
    def boxes(self) -> np.ndarray:
        """float32 (N, 4) xyxy boxes around the masks (zeros for an empty mask)."""
        if self._boxes is None:
            self._boxes = masks_to_boxes(self.masks)
        return self._boxes

    def filter(self, score_threshold: float) -> Results:
        """The instances scoring at least `score_threshold`."""
        return self[self.scores >= score_threshold]

    def plot(self, score_threshold: float = 0.3) -> np.ndarray:
        """uint8 RGB overlay of the instances scoring at least `score_threshold` (masks, boxes, class, score)."""
        from ..visualize import draw_instances

        return draw_instances(self.image, self.masks, self.labels, self.scores, list(self.classes), score_threshold)

    def to_coco(self, image_id: int, category_ids: list[int] | None = None) -> list[dict]:
        """COCO results entries: image_id, file_name, category_id (dataset ids), RLE segmentation, XYWH bbox, score."""
        from pycocotools import mask as mask_util

        ids = list(category_ids or self.category_ids or default_category_ids(len(self.classes)))
        if len(self) == 0:
            return []
        rles = mask_util.encode(np.asfortranarray(self.masks.transpose(1, 2, 0).astype(np.uint8)))
        file_name = str(self.path) if self.path is not None else ""
        out = []
        for k, rle in enumerate(rles):
            x0, y0, x1, y1 = (float(v) for v in self.boxes[k])
            out.append(
                {
                    "image_id": int(image_id),
                    "file_name": file_name,
                    "category_id": int(ids[int(self.labels[k])]),
                    "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(self.scores[k]),
                }
            )
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


def default_category_ids(num_classes: int) -> list[int]:
    """COCO's 80 ids for an 80-class model, otherwise 1..num_classes."""
    from ..data.coco_classes import COCO_CATEGORY_IDS

    return list(COCO_CATEGORY_IDS) if num_classes == 80 else list(range(1, num_classes + 1))


def default_names(num_classes: int) -> list[str]:
    from ..data.coco_classes import COCO_NAMES

    return list(COCO_NAMES) if num_classes == 80 else [f"class{i}" for i in range(num_classes)]


def expand_path(source: str | Path, kinds: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """A file, a folder (its files with a suffix in `kinds`, sorted, not recursive) or a glob pattern -> paths."""
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in kinds)
    if path.exists() or not glob.has_magic(str(source)):
        return [path]
    matches = sorted(Path(p) for p in glob.glob(str(source), recursive=True))
    files = [p for p in matches if p.is_file() and p.suffix.lower() in kinds]
    if not files:
        raise FastInstError(f"{source}: the pattern matches no {'/'.join(s[1:] for s in kinds[:4])}... file")
    return files


def _flatten(source: Any) -> list[tuple[Any, Path | None]]:
    """Any accepted input (or list of them) -> [(array/PIL/tensor or path, path or None)]."""
    if isinstance(source, (list, tuple)):
        return [item for s in source for item in _flatten(s)]
    if isinstance(source, (str, Path)):
        paths = expand_path(source)
        for p in paths:
            if p.suffix.lower() in VIDEO_SUFFIXES:
                raise FastInstError(f"{p}: is a video; use Predictor.predict_video or `fastinst predict`")
        return [(p, p) for p in paths]
    if isinstance(source, np.ndarray) and source.ndim == 4:
        return [(im, None) for im in source]
    if isinstance(source, torch.Tensor) and source.ndim == 4:
        return [(im, None) for im in source]
    return [(source, None)]


def load_image(item: Any) -> np.ndarray:
    """One input (path, numpy, PIL, tensor) -> uint8 (H, W, 3) RGB."""
    from ..data.images import read_image, to_rgb_array

    if isinstance(item, (str, Path)):
        return read_image(item)
    return to_rgb_array(item)


def parse_classes(spec: str | Path | Iterable[str] | None) -> tuple[list[str] | None, list[int] | None]:
    """Class names (and dataset category ids when known) from a list, a text file (one name a line), a COCO json
    (its `categories`, by id) or a comma-separated string. None -> (None, None)."""
    if spec is None:
        return None, None
    if not isinstance(spec, (str, Path)):
        return [str(n) for n in spec], None
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() == ".json":
            import json

            try:
                cats = sorted(json.loads(path.read_text())["categories"], key=lambda c: c["id"])
                return [str(c["name"]) for c in cats], [int(c["id"]) for c in cats]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise FastInstError(f"{path}: not a COCO json with categories ({type(e).__name__}: {e})") from None
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        names = [ln for ln in lines if ln and not ln.startswith("#")]
    elif str(spec).endswith((".txt", ".json")):
        raise FastInstError(f"{spec}: no such classes file")
    else:
        names = [n.strip() for n in str(spec).split(",") if n.strip()]
    if not names:
        raise FastInstError(f"{spec}: no class names found")
    return names, None


# ---------------------------------------------------------------------------------------------------------------------
# Predictor
# ---------------------------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FastInstError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FastInstError(f"device {device!r}: MPS is not available on this machine (use --device cpu)")
    return dev


class Predictor:
    """Wraps a FastInst model (or anything with its eval `__call__(batch) -> list[dict]` contract, e.g. OnnxModel)."""

    def __init__(
        self,
        model,
        names: list[str] | None = None,
        category_ids: list[int] | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "fp32",
        test_size: tuple[int, int] | None = None,
    ):
        if dtype not in DTYPES:
            raise FastInstError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        self.device = resolve_device(device)
        self.dtype = dtype
        if isinstance(model, nn.Module):
            model = model.to(self.device).eval()
        self.model = model
        cfg = getattr(model, "cfg", None)
        if test_size is None:
            if cfg is None:
                raise FastInstError("test_size (short side, max size) is needed for a model without a config")
            test_size = (cfg.input.min_size_test, cfg.input.max_size_test)
        self.test_size = (int(test_size[0]), int(test_size[1]))
        num_classes = getattr(model, "num_classes", None) or (len(names) if names else 80)
        self.names = list(names) if names else default_names(num_classes)
        if len(self.names) != num_classes:
            raise FastInstError(f"{len(self.names)} class names given for a model with {num_classes} classes")
        self.category_ids = list(category_ids) if category_ids else default_category_ids(num_classes)
        if len(self.category_ids) != num_classes:
            raise FastInstError(f"{len(self.category_ids)} category ids given for a model with {num_classes} classes")

    @classmethod
    def from_name(
        cls,
        name: str,
        weights: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "fp32",
        classes=None,
        category_ids: list[int] | None = None,
    ) -> Predictor:
        """A variant with weights from a file, `"official"` (downloaded, see `fastinst.hub`) or None (random init).

        A checkpoint written by `fastinst train` carries its config, which then wins over `name`; in other files the
        number of classes is read from the classifier's size. `classes`: a list, a text file (one name a line), a
        COCO json (category ids too) or a comma list; default: COCO's 80 names for an 80-class model.
        """
        from .. import build_model
        from ..checkpoint import load_checkpoint, read_checkpoint, to_state_dict
        from ..config import from_dict, get_config

        names, ids = parse_classes(classes)
        cfg = get_config(name)
        raw = None
        if weights is not None:
            if str(weights) == "official":
                from ..hub import official_weights

                weights = official_weights(name)
            raw = read_checkpoint(weights)
            if isinstance(raw.get("config"), dict):
                cfg = from_dict(raw["config"])
            else:  # the class count is in the file: the classifier has num_classes + 1 ("no object") rows
                bias = to_state_dict(raw).get("sem_seg_head.predictor.class_embed_layers.0.layers.2.bias")
                if bias is not None and bias.ndim == 1:
                    cfg.model.num_classes = int(bias.shape[0]) - 1
            if names and len(names) != cfg.model.num_classes:
                raise FastInstError(
                    f"{len(names)} class names given for {weights}, which has {cfg.model.num_classes} classes"
                )
        else:
            warnings.warn(f"{cfg.name}: no weights given, the model is randomly initialised", stacklevel=2)
            if names:
                cfg.model.num_classes = len(names)
        model = build_model(cfg)
        if raw is not None:
            _load_into(model, raw, weights, load_checkpoint)
        return cls(model, names, category_ids or ids, device=device, dtype=dtype)

    # -- running the model -------------------------------------------------------------------------------------------

    def _autocast(self):
        low = DTYPES[self.dtype]
        if low is None:
            return contextlib.nullcontext()
        if self.device.type == "cpu":
            low = torch.bfloat16  # CPU autocast: bf16 is the fast half-precision type there
        return torch.autocast(device_type=self.device.type, dtype=low)

    def infer(self, images: list[np.ndarray], max_dets: int = 100) -> list[dict[str, np.ndarray]]:
        """uint8 RGB arrays (one batch) -> raw per-image `masks`/`scores`/`labels` as numpy (float32 / bool)."""
        from ..model.preprocess import to_model_input

        batch = [to_model_input(np.ascontiguousarray(im), *self.test_size) for im in images]
        restore = getattr(self.model, "max_detections", None)
        if restore is not None and max_dets > restore:
            self.model.max_detections = max_dets
        try:
            with torch.inference_mode(), self._autocast():
                outputs = self.model(batch)
        finally:
            if restore is not None:
                self.model.max_detections = restore
        return [
            {
                "masks": _np(o["masks"]).astype(bool),
                "scores": _np(o["scores"]).astype(np.float32),
                "labels": _np(o["labels"]).astype(np.int64),
            }
            for o in outputs
        ]

    def _results(self, images, paths, batch_size, score_threshold, max_dets) -> Iterator[Results]:
        for s in range(0, len(images), max(1, batch_size)):
            chunk = images[s : s + batch_size]
            for im, path, out in zip(chunk, paths[s : s + batch_size], self.infer(chunk, max_dets), strict=True):
                order = np.argsort(-out["scores"], kind="stable")
                order = order[out["scores"][order] >= score_threshold][:max_dets]
                yield Results(
                    im,
                    out["masks"][order],
                    out["scores"][order],
                    out["labels"][order],
                    self.names,
                    self.category_ids,
                    path,
                )

    def stream(
        self, source, batch_size: int = 1, score_threshold: float = 0.0, max_dets: int = 100
    ) -> Iterator[Results]:
        """Like `predict`, but reads and yields one batch at a time (for long lists of files)."""
        items = _flatten(source)
        for s in range(0, len(items), max(1, batch_size)):
            chunk = items[s : s + batch_size]
            images = [load_image(item) for item, _ in chunk]
            yield from self._results(images, [p for _, p in chunk], batch_size, score_threshold, max_dets)

    def predict(self, source, batch_size: int = 1, score_threshold: float = 0.0, max_dets: int = 100) -> list[Results]:
        """Instances in each image of `source`: a numpy RGB array, PIL image, path (file, folder or glob), tensor,
        or a list of them. Results come sorted by score, filtered by `score_threshold`, at most `max_dets` each."""
        return list(self.stream(source, batch_size, score_threshold, max_dets))

    __call__ = predict

    def predict_video(
        self, path: str | Path, batch_size: int = 1, score_threshold: float = 0.0, max_dets: int = 100
    ) -> Iterator[Results]:
        """Decode a video with PyAV and yield one `Results` per frame (`path` = the video)."""
        path = Path(path)
        batch: list[np.ndarray] = []
        for frame in video_frames(path):
            batch.append(frame)
            if len(batch) == batch_size:
                yield from self._results(batch, [path] * len(batch), batch_size, score_threshold, max_dets)
                batch = []
        if batch:
            yield from self._results(batch, [path] * len(batch), batch_size, score_threshold, max_dets)


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        return (t.float() if t.is_floating_point() else t).numpy()
    return np.asarray(t)


def _load_into(model: nn.Module, raw: dict, label, load_checkpoint) -> None:
    """Load a checkpoint dict; the error names the file (load_checkpoint only sees the dict)."""
    from ..errors import CheckpointError

    try:
        load_checkpoint(model, raw)
    except CheckpointError as e:
        raise CheckpointError(f"{label}: {str(e).removeprefix('state dict: ')}") from None


def video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """uint8 RGB frames of a video file (PyAV)."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise FastInstError(f"{path}: cannot open the video ({e})") from None
    with container:
        if not container.streams.video:
            raise FastInstError(f"{path}: has no video stream")
        try:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as e:
            raise FastInstError(f"{path}: cannot decode the video ({e})") from None


def video_rate(path: str | Path) -> float:
    """Frames per second of a video's first video stream (25 if unknown)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or 25
        return float(rate)
