"""Inference on images: `Predictor` turns arrays / PIL images / paths / tensors / videos into `Results`.

    predictor = fastinst.load("fastinst-d1-r50", weights="official")       # or Predictor(fastinst.load_model(...))
    for r in predictor.predict(["a.jpg", "b.jpg"]):                        # score >= 0.3 by default
        print(r.instance_names, r.scores, r.boxes)                         # per instance
        r.save("a_overlay.png")                                            # or r.plot() -> RGB array

    for r in predictor.stream(0):                                          # a camera, a stream URL or a video:
        print(r.frame, r.summary())                                        # one Results per frame, the newest

The Predictor only reads sources and wraps results: the model owns image -> instances (`FastInst.detect`: resize,
normalise + pad, network, post-processing at each image's own size; `OnnxModel.detect` for an exported file).
`Results` and `found_again` are in `fastinst.engine.results`, the video reading (`VideoReader`, `open_video`) in
`fastinst.engine.video`, writers for overlays, COCO JSON and videos in `fastinst.engine.writers`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import nn

from ..defaults import DEFAULT_SCORE_THRESHOLD
from ..errors import FastInstError
from .results import Results
from .sources import FrameBatches, LiveSource, camera_source, fetch_image, parse_source
from .video import open_video

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
    * on a CPU, in fp32 and bf16, the ResNet blocks' ReLUs and residual adds run inside oneDNN's convolutions
      (`fuse.FusedBlock`, `fuse.FusedStem`).
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
