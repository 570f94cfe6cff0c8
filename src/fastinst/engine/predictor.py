"""Inference on images: `Predictor` turns arrays / PIL images / paths / tensors / videos into `Results`.

    predictor = fastinst.load("fastinst-d1-r50", weights="official")       # or Predictor(fastinst.load_model(...))
    for r in predictor.predict(["a.jpg", "b.jpg"]):                        # score >= 0.3 by default
        print(r.instance_names, r.scores, r.boxes)                         # per instance
        r.save("a_overlay.png")                                            # or r.plot() -> RGB array

The Predictor only reads sources and wraps results: the model owns image -> instances (`FastInst.detect`: resize,
normalise + pad, network, post-processing at each image's own size; `OnnxModel.detect` for an exported file).
Writers for overlays, COCO JSON and videos are in `fastinst.engine.writers`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import FastInstError

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
        )

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
        file_name = str(self.path) if self.path is not None else ""
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
                }
            )
        return out


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


def _flatten(source: Any) -> list[tuple[Any, Path | None]]:
    """Any accepted input (or list of them) -> [(array/PIL/tensor or path, path or None)]."""
    if isinstance(source, (list, tuple)):
        return [item for s in source for item in _flatten(s)]
    if isinstance(source, (str, Path)):
        from ..data.images import is_video, list_images

        paths = list_images(source)
        if not paths:
            raise FastInstError(f"{source}: no image files found")
        for p in paths:
            if is_video(p):
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
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_dets: int = 100,
    ) -> Iterator[Results]:
        """Like `predict`, but reads and yields one batch at a time (for long lists of files)."""
        items = _flatten(source)
        for s in range(0, len(items), max(1, batch_size)):
            chunk = items[s : s + max(1, batch_size)]
            images = [load_image(item) for item, _ in chunk]
            yield from self.predict_batch(images, [p for _, p in chunk], score_threshold, max_dets)

    def predict(
        self,
        source,
        batch_size: int = 1,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_dets: int = 100,
    ) -> list[Results]:
        """Instances in each image of `source`: a numpy RGB array, PIL image, path (file, folder or glob), tensor,
        or a list of them. Results come sorted by score, filtered by `score_threshold`, at most `max_dets` each."""
        return list(self.stream(source, batch_size, score_threshold, max_dets))

    __call__ = predict

    def predict_video(
        self,
        path: str | Path,
        batch_size: int = 1,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_dets: int = 100,
    ) -> Iterator[Results]:
        """Decode a video with PyAV and yield one `Results` per frame (`path` = the video)."""
        path = Path(path)
        batch: list[np.ndarray] = []
        for frame in video_frames(path):
            batch.append(frame)
            if len(batch) == max(1, batch_size):
                yield from self.predict_batch(batch, [path] * len(batch), score_threshold, max_dets)
                batch = []
        if batch:
            yield from self.predict_batch(batch, [path] * len(batch), score_threshold, max_dets)


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
    `rate` (frames per second, 25 when unknown) and `frames` (the container's count, or None). Iterating yields uint8
    (H, W, 3) RGB frames, one decoded at a time (nothing is buffered beyond the decoder's own queue). A missing file or
    device, a refused connection, a source without a video stream and a decoding error raise `FastInstError` naming
    `name`; so does a stream that does not answer within the timeout (a server that accepts the connection and sends
    nothing): `NAME: cannot open the video (timed out after N s)`, later `NAME: timed out after N s waiting for the
    next frame`, instead of what FFmpeg makes of the interruption ("Invalid data found when processing input").
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
        start = time.monotonic()
        try:
            self.container = av.open(str(source), format=format, options=options or {}, timeout=timeout)
        except (av.FFmpegError, OSError, ValueError) as e:
            limit = self.open_timeout
            if limit is not None and self._timed_out(e, time.monotonic() - start, limit):
                raise FastInstError(f"{self.name}: cannot open the video (timed out after {limit:g} s)") from None
            raise FastInstError(f"{self.name}: cannot open the video ({_reason(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise FastInstError(f"{self.name}: has no video stream")
        stream = self.container.streams.video[0]
        self.rate = float(stream.average_rate or stream.guessed_rate or 25)
        self.frames: int | None = stream.frames or None

    def __iter__(self) -> Iterator[np.ndarray]:
        import time

        import av

        asked = time.monotonic()  # when the next frame was asked for: the read timeout counts from there
        try:
            for frame in self.container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
                asked = time.monotonic()
        except (av.FFmpegError, OSError) as e:
            limit = self.read_timeout
            if limit is not None and self._timed_out(e, time.monotonic() - asked, limit):
                raise FastInstError(f"{self.name}: timed out after {limit:g} s waiting for the next frame") from None
            raise FastInstError(f"{self.name}: cannot decode the video ({_reason(e)})") from None

    @staticmethod
    def _timed_out(e: BaseException, waited: float, limit: float) -> bool:
        """Whether PyAV's timeout ended the call that raised `e` after `waited` seconds, rather than the source: its
        interrupt callback makes FFmpeg return AVERROR_EXIT (`av.error.ExitError`, raised for nothing else here), or
        an error the demuxer makes of the cut-off input ("Invalid data found when processing input" from RTSP's
        probe) once the call has waited the whole timeout."""
        import av

        return isinstance(e, av.error.ExitError) or waited >= limit

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """uint8 RGB frames of a video file (PyAV), decoded one at a time."""
    with VideoReader(path) as reader:
        yield from reader
