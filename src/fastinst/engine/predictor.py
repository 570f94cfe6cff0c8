"""Inference on images: `Predictor` turns arrays / PIL images / paths / tensors / videos into `Results`.

    predictor = fastinst.load("fastinst-d1-r50", weights="official")       # or Predictor(fastinst.load_model(...))
    for r in predictor.predict(["a.jpg", "b.jpg"]):                        # score >= 0.3 by default
        print(r.instance_names, r.scores, r.boxes)                         # per instance
        r.save("a_overlay.png")                                            # or r.plot() -> RGB array

    for r in predictor.stream(0):                                          # a camera, a stream URL or a video:
        print(r.frame, r.summary())                                        # one Results per frame, the newest

The Predictor only reads sources and wraps results: the model owns image -> instances (`FastInst.detect`: resize,
normalise + pad, network, post-processing at each image's own size; `OnnxModel.detect` for an exported file).
Writers for overlays, COCO JSON and videos are in `fastinst.engine.writers`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import nn

from ..errors import FastInstError
from .sources import FrameBatches, LiveSource, camera_source, fetch_image, parse_source, timeout_message

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
        """float32 (N, 4) xyxy boxes around the masks (zeros for an empty mask)."""
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
        from ..data.datasets import masks_to_rles

        rles = masks_to_rles(self.masks[[k for k, _ in keep]])
        file_name = str(self.path) if self.path is not None else (self.source or "")
        frame = {} if self.frame is None else {"frame": int(self.frame)}
        out = []
        for (k, cid), rle in zip(keep, rles, strict=True):
            x0, y0, x1, y1 = (float(v) for v in self.boxes[k])
            label = int(self.labels[k])
            out.append(
                {
                    "image_id": int(image_id),
                    "file_name": file_name,
                    "category_id": int(cid),
                    "category_name": str(self.names[label]),
                    "segmentation": rle,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
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
            from ..data.datasets import masks_to_rles

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


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """One input: `kind` "image" (`value`: array, PIL image, tensor, file path or image-URL `LiveSource`) or "video"
    (`value`: a video file's path, or a camera / stream `LiveSource`); `path`: the file, when it is one."""

    kind: str
    value: Any
    path: Path | None = None


def _items(source: Any) -> list[_Item]:
    """Any accepted input (or list of them) -> its `_Item`s, in order: files, folders and globs expand to their
    images (a video named directly is a video), a camera index or stream URL is a video, an http(s) image URL is an
    image."""
    if isinstance(source, (list, tuple)):
        return [item for s in source for item in _items(s)]
    if isinstance(source, LiveSource):
        return [_Item("image" if source.kind == "image" else "video", source)]
    if isinstance(source, (int, np.integer)) and not isinstance(source, (bool, np.bool_)):
        return [_Item("video", camera_source(int(source)))]
    if isinstance(source, str):
        live = parse_source(source)
        if live is not None:
            return _items(live)
    if isinstance(source, (str, Path)):
        from ..data.images import is_video, list_images

        paths = list_images(source)
        if not paths:
            raise FastInstError(f"{source}: no image files found")
        return [_Item("video" if is_video(p) else "image", p, p) for p in paths]
    if isinstance(source, (np.ndarray, torch.Tensor)) and source.ndim == 4:
        return [_Item("image", im) for im in source]
    return [_Item("image", source)]


def _name(value: Any) -> str:
    return value.name if isinstance(value, LiveSource) else str(value)


def load_image(item: Any, timeout: float | tuple[float, float] | None = None) -> np.ndarray:
    """One input (path, http(s) image URL, numpy, PIL, tensor) -> uint8 (H, W, 3) RGB. An image URL is downloaded
    with `timeout` (default `STREAM_TIMEOUT`; `fastinst.engine.sources.fetch_image`)."""
    from ..data.images import read_image, to_rgb_array

    if isinstance(item, str):
        live = parse_source(item)
        if live is not None:
            item = live
    if isinstance(item, LiveSource):
        if item.kind != "image":
            raise FastInstError(f"{item.name}: is a video source, not an image; use Predictor.stream or predict_video")
        return fetch_image(item, timeout)
    if isinstance(item, (str, Path)):
        return read_image(item)
    return to_rgb_array(item)


def _threshold(score_threshold: float | None, conf: float | None) -> float:
    """The score threshold from `score_threshold` or its Ultralytics name `conf` (one of them; default 0.3)."""
    if conf is not None and score_threshold is not None and conf != score_threshold:
        raise FastInstError(f"score_threshold={score_threshold} and conf={conf}: pass one (conf is its other name)")
    value = conf if conf is not None else score_threshold
    return DEFAULT_SCORE_THRESHOLD if value is None else float(value)


def _max_dets(max_dets: int | None, max_det: int | None) -> int:
    """`max_dets` or its Ultralytics name `max_det` (one of them; default 100)."""
    if max_det is not None and max_dets is not None and max_det != max_dets:
        raise FastInstError(f"max_dets={max_dets} and max_det={max_det}: pass one (max_det is its other name)")
    value = max_det if max_det is not None else max_dets
    return 100 if value is None else int(value)


# ---------------------------------------------------------------------------------------------------------------------
# Predictor
# ---------------------------------------------------------------------------------------------------------------------

DEFAULT_SCORE_THRESHOLD = 0.3
"""One default for the CLI and the API: FastInst always proposes its 100 best (query, class) pairs and most score
near zero. COCO evaluation uses 0 (the official 100 detections), which `fastinst eval` does by itself."""


class Predictor:
    """Runs a model with the inference contract of `FastInst.detect` (a FastInst, or an `OnnxModel`) over sources.

    A FastInst is prepared once for inference on its device (`fastinst.model.fuse.optimize_for_inference`, on a copy:
    the model passed in is left as it is): BatchNorms folded into the convs, channels_last weights (oneDNN's and
    cuDNN's faster conv layout: D1-R50 network 1151 vs 1365 ms in fp32 on a 2-core Cascade Lake), and the precision
    `dtype`:

    * "auto" (default): fp16 on CUDA, bf16 on CPUs with bf16 hardware (AMX, AVX512-BF16), fp32 on other CPUs
      (`fastinst.model.fuse.inference_dtype` says why); "fp32", "bf16", "fp16" force one (fp16 runs as bf16 on a
      CPU). Results are float32 either way.
    * bf16 / fp16: conv and linear weights cast once, autocast for the rest (norms stay fp32).
    """

    def __init__(self, model: Any, dtype: str = "auto"):
        from ..model.fuse import DTYPE_CHOICES, DTYPES, dtype_reason, inference_dtype, optimize_for_inference

        if dtype not in DTYPE_CHOICES:
            raise FastInstError(f"dtype {dtype!r}: choose one of {', '.join(DTYPE_CHOICES)}")
        self.names: list[str] = list(model.names)
        self.category_ids: list[int | None] = list(model.category_ids)
        if isinstance(model, nn.Module):
            device = next(model.parameters()).device
            self.dtype = inference_dtype(dtype, device)
            self.dtype_reason = dtype_reason(dtype, device)
            model = optimize_for_inference(model, channels_last=True, dtype=DTYPES[self.dtype])
        else:  # an exported model runs in its runtime's precision (onnxruntime: fp32 as exported; OpenVINO: its own)
            self.dtype = str(getattr(model, "dtype", "fp32"))
            self.dtype_reason = str(getattr(model, "dtype_reason", "exported"))
        self.model: Any = model

    @property
    def run_info(self) -> dict[str, str]:
        """What runs: model (variant name), device, backend (torch / onnxruntime), dtype and why (`describe_run`)."""
        return run_info(self.model, self.dtype, self.dtype_reason)

    def describe(self) -> str:
        """One line, e.g. `fastinst-d1-r50 · cpu · torch · bf16 (auto: AMX)`, printed once by each command."""
        return describe_run(self.run_info)

    @property
    def device(self) -> torch.device:
        return getattr(self.model, "device", torch.device("cpu"))

    def _autocast(self):
        if self.dtype == "fp32" or not isinstance(self.model, nn.Module):
            return contextlib.nullcontext()
        low = torch.float16 if self.dtype == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=low)

    def detect(self, images: list[np.ndarray], score_threshold: float = 0.0, max_detections: int | None = None):
        """`FastInst.detect` in this predictor's precision: RGB uint8 (H0, W0, 3) images -> per image `masks` bool
        (n, H0, W0), `scores`, `labels`, `queries` (n,) tensors, best first (what `fastinst eval --dtype` runs)."""
        with torch.inference_mode(), self._autocast():
            return self.model.detect(images, score_threshold=score_threshold, max_detections=max_detections)

    def predict_batch(
        self,
        images: list[np.ndarray],
        paths: list[Path | None] | None = None,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_dets: int = 100,
    ) -> list[Results]:
        """One forward pass over RGB uint8 (H, W, 3) arrays -> Results (best first, score >= threshold, <= max_dets)."""
        paths = paths if paths is not None else [None] * len(images)
        if not 0.0 <= score_threshold <= 1.0:
            raise FastInstError(f"score threshold {score_threshold}: must be between 0 and 1")
        if max_dets < 1:
            raise FastInstError(f"max_dets {max_dets}: must be at least 1")
        found = self.detect(images, score_threshold, max_dets)
        return [
            Results(
                im,
                _np(out["masks"]).astype(bool, copy=False),
                _np(out["scores"]).astype(np.float32),
                _np(out["labels"]).astype(np.int64),
                self.names,
                self.category_ids,
                path,
            )
            for im, path, out in zip(images, paths, found, strict=True)
        ]

    def stream(
        self,
        source,
        batch_size: int = 1,
        score_threshold: float | None = None,
        max_dets: int | None = None,
        *,
        conf: float | None = None,
        max_det: int | None = None,
        every_frame: bool | None = None,
        timeout: float | None = None,
    ) -> Iterator[Results]:
        """Like `predict`, but lazy: reads and yields one batch at a time (for long lists of files), and takes
        videos, cameras (`0`) and stream URLs too, one `Results` per frame as `predict_video` gives them (live
        sources: the newest frames, unless `every_frame`). The sources are checked now; nothing is read before the
        first result is asked for."""
        threshold, dets = _threshold(score_threshold, conf), _max_dets(max_dets, max_det)
        return self._stream(_items(source), max(1, batch_size), threshold, dets, every_frame, timeout)

    def _stream(
        self,
        items: list[_Item],
        batch_size: int,
        threshold: float,
        dets: int,
        every_frame: bool | None,
        timeout: float | None,
    ) -> Iterator[Results]:
        chunk: list[_Item] = []

        def images() -> list[Results]:
            results = self.predict_batch(
                [load_image(i.value, timeout) for i in chunk], [i.path for i in chunk], threshold, dets
            )
            for r, i in zip(results, chunk, strict=True):
                if isinstance(i.value, LiveSource):
                    r.source = i.value.name
            chunk.clear()
            return results

        for item in items:
            if item.kind == "video":
                if chunk:
                    yield from images()
                yield from self._video(item.value, batch_size, threshold, dets, every_frame, timeout, None)
                continue
            chunk.append(item)
            if len(chunk) == batch_size:
                yield from images()
        if chunk:
            yield from images()

    @overload
    def predict(
        self,
        source,
        batch_size: int = 1,
        score_threshold: float | None = None,
        max_dets: int | None = None,
        *,
        conf: float | None = None,
        max_det: int | None = None,
        stream: Literal[False] = False,
        timeout: float | None = None,
    ) -> list[Results]: ...

    @overload
    def predict(
        self,
        source,
        batch_size: int = 1,
        score_threshold: float | None = None,
        max_dets: int | None = None,
        *,
        conf: float | None = None,
        max_det: int | None = None,
        stream: Literal[True],
        timeout: float | None = None,
    ) -> Iterator[Results]: ...

    def predict(
        self,
        source,
        batch_size: int = 1,
        score_threshold: float | None = None,
        max_dets: int | None = None,
        *,
        conf: float | None = None,
        max_det: int | None = None,
        stream: bool = False,
        timeout: float | None = None,
    ) -> list[Results] | Iterator[Results]:
        """Instances in each image of `source`: a numpy RGB array, PIL image, path (file, folder or glob), http(s)
        image URL (downloaded with `timeout`, default 10 s), tensor, or a list of them. Results come sorted by score,
        filtered by `score_threshold` (default 0.3; `conf` is the same, by its Ultralytics name), at most `max_dets`
        (or `max_det`) each. Videos, cameras and streams give one result per frame: use `stream=True` (the same as
        `Predictor.stream`) or `predict_video`, which yield them as they come instead of a list."""
        if stream:
            return self.stream(
                source, batch_size, score_threshold, max_dets, conf=conf, max_det=max_det, timeout=timeout
            )
        threshold, dets = _threshold(score_threshold, conf), _max_dets(max_dets, max_det)
        items = _items(source)
        for item in items:
            if item.kind == "video":
                what = "is a video" if isinstance(item.value, Path) else f"is a live source ({item.value.kind})"
                if isinstance(item.value, LiveSource) and item.value.url.lower().startswith(("http:", "https:")):
                    what = "has no image extension (.jpg, .png...), so it is read as a video stream"
                raise FastInstError(
                    f"{_name(item.value)}: {what}, one result per frame: use Predictor.stream (or predict(..., "
                    "stream=True)) or predict_video, which yield them as they come"
                )
        return list(self._stream(items, max(1, batch_size), threshold, dets, None, timeout))

    __call__ = predict

    def predict_video(
        self,
        source: str | Path | int | LiveSource,
        batch_size: int = 1,
        score_threshold: float | None = None,
        max_dets: int | None = None,
        *,
        every_frame: bool | None = None,
        timeout: float | None = None,
        max_frames: int | None = None,
        conf: float | None = None,
        max_det: int | None = None,
    ) -> Iterator[Results]:
        """One `Results` per frame of a video file, a camera (an index: `predict_video(0)`, or a device such as
        `/dev/video0`) or a stream URL (rtsp, rtmp, http(s), udp, tcp), decoded with PyAV as frames arrive.

        * Which frames: a source with a known end (a file; a URL whose length or duration is known) gives every frame
          in order. A live source (a camera, a live stream) gives the newest frames: those that arrive while the
          model is busy are dropped, so the results stay live however slow the model; `r.frame` is each frame's
          index in the source, so its gaps are the dropped frames. `every_frame=True` keeps every frame of any
          source (a live one then falls behind); `every_frame=False` drops on any source.
        * `timeout` (seconds, default `STREAM_TIMEOUT` = 10 for URLs, none for cameras and files): a source that
          does not open, or sends nothing for that long, raises `FastInstError("URL: no data for 10 s (timeout)")`.
        * `max_frames`: stop after that many results. Leaving the loop early (`break`) closes the source.
        * `r.path` is the file (None for a camera or stream), `r.source` the camera's or URL's name (password
          hidden). Every failure is a one-line `FastInstError` naming the source."""
        threshold, dets = _threshold(score_threshold, conf), _max_dets(max_dets, max_det)
        spec = _video_source(source)
        return self._video(spec, max(1, batch_size), threshold, dets, every_frame, timeout, max_frames)

    def _video(
        self,
        spec: Path | LiveSource,
        batch_size: int,
        threshold: float,
        dets: int,
        every_frame: bool | None,
        timeout: float | None,
        max_frames: int | None,
    ) -> Iterator[Results]:
        reader = open_video(spec, timeout)
        drop = not reader.ends if every_frame is None else not every_frame
        path, name = (spec, None) if isinstance(spec, Path) else (None, spec.name)
        frames = FrameBatches(
            reader, batch_size, drop=drop, threaded=isinstance(spec, LiveSource), max_frames=max_frames
        )
        try:
            for batch in frames:
                results = self.predict_batch([f for _, f in batch], [path] * len(batch), threshold, dets)
                for (index, _), r in zip(batch, results, strict=True):
                    r.source, r.frame = name, index
                    yield r
        finally:
            frames.close()


def _video_source(source: Any) -> Path | LiveSource:
    """What `predict_video` takes -> a video file's path, or a camera / stream `LiveSource` (checked, not opened)."""
    live: LiveSource | None = None
    if isinstance(source, LiveSource):
        live = source
    elif isinstance(source, (int, np.integer)) and not isinstance(source, (bool, np.bool_)):
        live = camera_source(int(source))
    elif isinstance(source, str):
        live = parse_source(source)
    elif not isinstance(source, Path):
        raise FastInstError(
            f"predict_video: a {type(source).__name__} is not a video source (a file path, a camera index or a "
            "stream URL; for images use predict)"
        )
    if live is None:
        return Path(source)
    if live.kind == "image":
        raise FastInstError(f"{live.name}: is an image URL; use Predictor.predict")
    return live


def open_video(source: Path | LiveSource | str, timeout: float | None = None) -> VideoReader:
    """Open a video file or a camera / stream `LiveSource` with PyAV (`VideoReader`); `timeout` (seconds) replaces
    the source's own (`STREAM_TIMEOUT` for URLs, none for cameras and files)."""
    if isinstance(source, LiveSource):
        limit = (float(timeout), float(timeout)) if timeout is not None else source.timeout
        return VideoReader(source.url, format=source.format, options=source.options, timeout=limit, name=source.name)
    limit = (float(timeout), float(timeout)) if timeout is not None else None
    return VideoReader(source, timeout=limit)


def run_info(model: Any, dtype: str = "fp32", reason: str = "") -> dict[str, str]:
    """What a model runs as, for the line each command prints and the `run` block of metrics.json / the side file
    of predictions.json: model (the variant's name), device, backend, dtype and dtype_reason."""
    cfg = getattr(model, "cfg", None)
    backend = "torch" if isinstance(model, nn.Module) else str(getattr(model, "backend", "onnxruntime"))
    device = getattr(model, "device", None)
    return {
        "model": str(getattr(cfg, "name", None) or type(model).__name__),
        "device": str(device if device is not None else "cpu"),
        "backend": backend,
        "dtype": dtype,
        "dtype_reason": reason,
    }


def describe_run(info: dict[str, str]) -> str:
    """`fastinst-d1-r50 · cpu · torch · bf16 (auto: AMX)` from `run_info`."""
    reason = f" ({info['dtype_reason']})" if info.get("dtype_reason") else ""
    return f"{info['model']} · {info['device']} · {info['backend']} · {info['dtype']}{reason}"


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        return (t.float() if t.is_floating_point() else t).numpy()
    return np.asarray(t)


def _reason(e: BaseException) -> str:
    """An FFmpeg / OS error's own words, without the file name or URL it repeats (a URL may hold a password)."""
    text = str(getattr(e, "strerror", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class VideoReader:
    """A video file, camera device or network stream opened with PyAV, read frame by frame as frames arrive.

    `source` is what `av.open` takes (a path, `/dev/video0`, a URL); `format` forces a demuxer (`v4l2`,
    `avfoundation`, `dshow` for cameras), `options` are its options, `timeout` is PyAV's (open, read) timeout in
    seconds, `name` is what messages call the source (default `str(source)`, a URL's password hidden). Attributes:
    `rate` (frames per second, 25 when unknown), `frames` (the container's count, or None) and `ends` (whether the
    source has a known end: a file, or a URL whose duration or length FFmpeg knows; a camera, a device or a live
    stream has none). Iterating yields uint8 (H, W, 3) RGB frames, one decoded at a time (nothing is buffered beyond
    the decoder's own queue). A missing file or device, a refused connection, a source without a video stream and a
    decoding error raise `FastInstError` naming `name`; so does a stream that does not answer within the timeout (a
    server that accepts the connection and sends nothing, a UDP port nobody sends to, a stream that stops):
    `NAME: no data for N s (timeout)`, instead of what FFmpeg makes of the interruption ("Immediate exit requested",
    "Invalid data found when processing input").
    """

    def __init__(
        self,
        source: str | Path,
        *,
        format: str | None = None,
        options: dict[str, str] | None = None,
        timeout: float | tuple[float, float] | None = None,
        name: str | None = None,
    ):
        import time

        import av

        from .sources import redact_url

        self.name = name or redact_url(str(source))
        self.open_timeout, self.read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self._closed = False
        start = time.monotonic()
        try:
            self.container = av.open(str(source), format=format, options=options or {}, timeout=timeout)
        except (av.FFmpegError, OSError, ValueError) as e:
            waited = time.monotonic() - start
            if self._timed_out(e, waited, self.open_timeout):
                raise FastInstError(timeout_message(self.name, self.open_timeout or waited)) from None
            raise FastInstError(f"{self.name}: cannot open the video ({_reason(e)})") from None
        if not self.container.streams.video:
            self.close()
            raise FastInstError(f"{self.name}: has no video stream")
        stream = self.container.streams.video[0]
        self.rate = float(stream.average_rate or stream.guessed_rate or 25)
        self.frames: int | None = stream.frames or None
        self.ends = self._ends()

    def _ends(self) -> bool:
        """Whether FFmpeg knows where the source ends: its duration, or (outside playlists, whose size is the
        playlist's) its length in bytes, as a file or a recording served over HTTP with its length has."""
        container = self.container
        if container.duration is not None and container.duration > 0:
            return True
        if container.format.name in ("hls", "dash"):
            return False
        try:
            return int(container.size) > 0  # avio_size: < 0 for a live stream, a pipe, a device, RTSP
        except (AttributeError, TypeError, ValueError, OSError):
            return False

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in self.decoded():
            yield frame.to_ndarray(format="rgb24")

    def decoded(self) -> Iterator[Any]:
        """The decoded PyAV frames, before their conversion to RGB (`frame.to_ndarray(format="rgb24")`), which a
        live source's reader (`fastinst.engine.sources.FrameFeed`) leaves to the frames it does not drop."""
        import time

        import av

        asked = time.monotonic()  # when the next frame was asked for: the read timeout counts from there
        try:
            for frame in self.container.decode(video=0):
                yield frame
                asked = time.monotonic()
        except (av.FFmpegError, OSError) as e:
            waited = time.monotonic() - asked
            if self._timed_out(e, waited, self.read_timeout):
                raise FastInstError(timeout_message(self.name, self.read_timeout or waited)) from None
            raise FastInstError(f"{self.name}: cannot decode the video ({_reason(e)})") from None

    @staticmethod
    def _timed_out(e: BaseException, waited: float, limit: float | None) -> bool:
        """Whether PyAV's timeout ended the call that raised `e` after `waited` seconds, rather than the source: its
        interrupt callback makes FFmpeg return AVERROR_EXIT (`av.error.ExitError`, "Immediate exit requested",
        raised for nothing else here), or an error the demuxer makes of the cut-off input ("Invalid data found when
        processing input" from RTSP's probe) once the call has waited the whole timeout."""
        import av

        return isinstance(e, av.error.ExitError) or (limit is not None and waited >= limit)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """uint8 RGB frames of a video file (PyAV), decoded one at a time."""
    with VideoReader(path) as reader:
        yield from reader
