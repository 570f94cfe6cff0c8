"""Runtimes for an exported FastInst network, each with the PyTorch model's inference contract.

The eager PyTorch runtime is `FastInst` itself. The exported ones share `ExportedModel`: the same test resize
(`fastinst.model.preprocess.to_model_input`), the same normalise + pad (`normalize_and_pad`), the runtime's network
(`forward_raw`: (B, 3, H, W) -> `pred_logits` (B, Q, K+1), `pred_masks` (B, Q, H/8, W/8)), and the same
post-processing (`fastinst.model.postprocess.instances`). Each offers `detect(images, score_threshold,
max_detections)`, `__call__(batch, ...)` as `FastInst` in eval mode, `cfg`, `num_classes`, `names`, `category_ids`,
`backend`, `dtype` and `dtype_reason`: a drop-in model for the `Predictor`, `fastinst eval` and the app.

* `OnnxModel(path)`: an ONNX file from `fastinst export`, run by onnxruntime (fp32, as exported).
* `OpenVinoModel(path, dtype)`: an OpenVINO IR (`.xml` + `.bin`, `fastinst export --format openvino`) or an ONNX
  file, compiled by OpenVINO for the CPU in `dtype` (`INFERENCE_PRECISION_HINT`: "auto" = bf16 where the CPU has
  bf16 matrix hardware, as `fastinst.model.fuse.inference_dtype`, else fp32). A dynamic file is compiled once per
  input size (kept for the last few sizes).

These only run networks. Exporting is `fastinst.export`, which builds on them (`verify_runtime`); a PyTorch model
exported once into the fastinst cache for `--backend openvino --weights W` is `fastinst.factory.openvino_from_torch`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, from_dict
from .errors import FastInstError
from .model.postprocess import instances
from .model.preprocess import normalize_and_pad, to_model_input

INPUT, OUTPUTS = "images", ("pred_logits", "pred_masks")
BACKENDS = ("torch", "onnxruntime", "openvino")
COMPILED_SIZES = 4  # compiled input sizes an OpenVinoModel keeps for a dynamic file


def enough_cells(size: Sequence[int], cfg: Config) -> bool:
    """Whether the stride-16 map of a `size` input has at least as many cells as the model has queries."""
    return (size[0] // 16) * (size[1] // 16) >= cfg.model.num_queries


def fixed_size(meta: dict[str, str]) -> tuple[int, int] | None:
    """The fixed (H, W) input an exported file's metadata records; None for a dynamic file."""
    fixed = meta.get("fastinst.size", "dynamic")
    if fixed == "dynamic":
        return None
    h, w = (int(v) for v in fixed.split(","))
    return h, w


def pad_batch(cfg: Config, batch: list[dict], size: tuple[int, int] | None = None):
    """A batch's uint8 (3, h, w) images -> normalised padded (B, 3, H, W) on the CPU and the [(h, w)], as
    `FastInst.preprocess` (to `size` for a fixed-size file)."""
    images = [torch.as_tensor(d["image"]).cpu() for d in batch]  # (3, h, w) uint8 each
    return normalize_and_pad(images, cfg.model.pixel_mean, cfg.model.pixel_std, cfg.model.size_divisibility, size)


def _json_list(meta: dict[str, str], key: str, default: list[Any], path: Path) -> list[Any]:
    """A JSON list stored under `key` in a file's metadata (`default` when absent)."""
    if key not in meta:
        return default
    try:
        value = json.loads(meta[key])
    except ValueError:
        value = None
    if not isinstance(value, list):
        raise FastInstError(f"{path}: its metadata {key!r} is not a JSON list")
    return value


# ---------------------------------------------------------------------------------------------------------------------
# The shared contract
# ---------------------------------------------------------------------------------------------------------------------


class ExportedModel:
    """The inference contract of `FastInst` around an exported network (`forward_raw`, per runtime).

    Fixed-size files take images up to their size: smaller ones are zero-padded to it (as PyTorch pads a batch to its
    largest image), larger ones raise `FastInstError`. Fixed files run one image at a time, dynamic ones a batch at a
    time (padded to its largest image, as PyTorch).
    """

    device = torch.device("cpu")  # outputs are CPU tensors (what `Predictor.device` reads)
    backend = "exported"
    dtype, dtype_reason = "fp32", "exported"

    def __init__(self, path: Path, meta: dict[str, str], cfg: Config | None, kind: str):
        from .model.fastinst import class_metadata

        self.path = path
        if cfg is None:
            if "fastinst.config" not in meta:
                raise FastInstError(
                    f"{path}: not written by `fastinst export` (no config in its metadata); pass the config"
                )
            cfg = from_dict(json.loads(meta["fastinst.config"]))
        self.cfg = cfg
        self.num_classes = cfg.model.num_classes
        names, ids = class_metadata(cfg)
        self.names: list[str] = [str(n) for n in _json_list(meta, "fastinst.names", names, path)]
        self.category_ids: list[int | None] = [int(i) for i in _json_list(meta, "fastinst.category_ids", ids, path)]
        if len(self.names) != self.num_classes or len(self.category_ids) != self.num_classes:
            raise FastInstError(
                f"{path}: {len(self.names)} class names and {len(self.category_ids)} category ids in its "
                f"metadata for {self.num_classes} classes"
            )
        self.max_detections = 100
        self.size = fixed_size(meta)
        self.kind = kind  # "ONNX", "OpenVINO": what messages call the file
        # the mask logits' dtype for post-processing: bf16 when the network computed them in bf16, which lets
        # `postprocess.instances` take its short route (`model/span_masks.py`) as it does for a bf16 PyTorch network
        self.mask_dtype = torch.float32
        # TorchScript-exported dynamic files trace a fixed top-k size: they need enough stride-16 cells
        self._needs_cells = self.size is None and meta.get("fastinst.exporter", "torchscript") == "torchscript"

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised padded (B, 3, H, W) -> pred_logits (B, Q, K+1), pred_masks (B, Q, H/8, W/8) (CPU tensors)."""
        raise NotImplementedError

    def __call__(
        self, batch: list[dict], score_threshold: float = 0.0, max_detections: int | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """`FastInst.forward` in eval: items with `image` uint8 (3, h, w) already resized and `height`/`width` (the
        size masks come back at) -> per item `masks` bool (n, H0, W0), `scores`, `labels`, `queries` (n,), best
        first, n <= `max_detections` (default 100), every score >= `score_threshold`."""
        k = max_detections or self.max_detections
        chunks = [batch] if self.size is None else [[d] for d in batch]
        results = []
        with torch.inference_mode():
            for chunk in chunks:
                images, sizes = self.preprocess(chunk)  # (B, 3, H, W), [(h, w)] before padding
                logits, masks = self.forward_raw(images)  # (B, Q, K+1), (B, Q, H/8, W/8)
                padded = (int(images.shape[-2]), int(images.shape[-1]))
                for i, d in enumerate(chunk):
                    original = (int(d.get("height", sizes[i][0])), int(d.get("width", sizes[i][1])))
                    mask_logits = masks[i].to(self.mask_dtype)  # (Q, H/8, W/8)
                    results.append(instances(logits[i], mask_logits, padded, sizes[i], original, k, score_threshold))
        return results

    def preprocess(self, chunk: list[dict]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """`FastInst.preprocess`: uint8 (3, h, w) images -> normalised (B, 3, H, W) padded to this file's fixed size
        (or a multiple of 32), and the [(h, w)] before padding; one line when the file cannot take them."""
        try:
            images, sizes = pad_batch(self.cfg, chunk, self.size)
        except ValueError as e:  # larger than the fixed input of this file
            raise FastInstError(f"{self.path}: {e}; export with --dynamic or a larger --size") from None
        if self._needs_cells and not enough_cells(images.shape[-2:], self.cfg):
            raise FastInstError(
                f"{self.path}: a {images.shape[-2]}x{images.shape[-1]} input is too small for this "
                f"dynamic {self.kind} file (needs H/16 x W/16 >= {self.cfg.model.num_queries} queries)"
            )
        return images, sizes

    def detect(
        self, images: list[np.ndarray], score_threshold: float = 0.0, max_detections: int | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """`FastInst.detect`: RGB uint8 images (H0, W0, 3) -> per image `masks` bool (n, H0, W0), `scores`,
        `labels`, `queries` (n,), best first, through the same test resize, normalise + pad and post-processing."""
        short, max_size = self.cfg.input.min_size_test, self.cfg.input.max_size_test
        batch = [to_model_input(np.ascontiguousarray(im), short, max_size) for im in images]  # resized (3, h, w)
        return self(batch, score_threshold=score_threshold, max_detections=max_detections)


# ---------------------------------------------------------------------------------------------------------------------
# onnxruntime
# ---------------------------------------------------------------------------------------------------------------------


def _ort_errors() -> tuple[type[Exception], ...]:
    """What onnxruntime raises for a file or option it cannot use: the exception classes of its C++ core (Fail,
    InvalidProtobuf, NoSuchFile, InvalidGraph, ..., which derive from Exception only) and the ValueError / TypeError /
    RuntimeError / OSError of its Python wrapper."""
    from onnxruntime.capi import onnxruntime_pybind11_state as core

    native = tuple(v for v in vars(core).values() if isinstance(v, type) and issubclass(v, Exception))
    return (*native, ValueError, TypeError, RuntimeError, OSError)


def ort_session(path: str | Path, providers: list[str] | None = None, threads: int | None = None):
    """An onnxruntime session of `path` (CPU unless `providers`), or a one-line `FastInstError`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
    except _ort_errors() as e:
        raise FastInstError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None


class OnnxModel(ExportedModel):
    """An ONNX file from `fastinst export` run by onnxruntime, with `FastInst`'s inference contract."""

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        cfg: Config | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
    ):
        path = Path(path)
        if not path.is_file():
            raise FastInstError(f"{path}: no such ONNX file")
        self.session = ort_session(path, providers, threads)
        super().__init__(path, dict(self.session.get_modelmeta().custom_metadata_map), cfg, "ONNX")

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, masks = self.session.run(list(OUTPUTS), {INPUT: images.float().contiguous().numpy()})
        return torch.from_numpy(logits), torch.from_numpy(masks)


# ---------------------------------------------------------------------------------------------------------------------
# OpenVINO
# ---------------------------------------------------------------------------------------------------------------------

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def openvino_dtype(name: str) -> tuple[str, str]:
    """(the precision OpenVINO runs, why) for `--dtype name` on the CPU: "auto" is bf16 where the CPU has bf16
    matrix hardware (`fastinst.model.fuse.bf16_hardware`), else fp32; fp16 asked for runs as bf16, as in PyTorch."""
    from .model.fuse import DTYPE_CHOICES, dtype_reason, inference_dtype

    if name not in DTYPE_CHOICES:
        raise FastInstError(f"dtype {name!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    return inference_dtype(name, "cpu"), dtype_reason(name, "cpu")


def _ov_errors() -> tuple[type[Exception], ...]:
    """What OpenVINO raises for a file it cannot use: its native failures (GeneralFailure, OpConversionFailure, ...,
    which derive from Exception only) and RuntimeError / ValueError / OSError."""
    from openvino import _pyopenvino as core

    native = tuple(v for v in vars(core).values() if isinstance(v, type) and issubclass(v, Exception))
    return (*native, RuntimeError, ValueError, OSError)


def _ov_meta(model: Any) -> dict[str, str]:
    """The `fastinst.*` metadata of an OpenVINO model: the ONNX file's metadata, which OpenVINO keeps under rt_info
    `framework` (in an IR written by `fastinst export --format openvino` too)."""
    if not model.has_rt_info(["framework"]):
        return {}
    keys = [str(k) for k in model.get_rt_info(["framework"]).astype(dict)]
    return {k: model.get_rt_info(["framework", k]).astype(str) for k in keys if k.startswith("fastinst.")}


@contextlib.contextmanager
def _keeping_signal_stack() -> Iterator[None]:
    """Around OpenVINO's `compile_model`: the calling thread's alternate signal stack is put back as it was.

    OpenVINO 2026.4's CPU plugin leaves the thread's `sigaltstack` pointing at a small stack of its own after compiling
    (seen on Linux x86-64); once that memory is released, the next signal whose handler runs on the alternate stack
    (Python's handlers do, and faulthandler's) kills the process with SIGSEGV. Linux/glibc only; elsewhere a no-op."""
    libc = _libc()
    if libc is None:
        yield
        return
    before = _StackT()
    libc.sigaltstack(None, ctypes.byref(before))
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(before), None)


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@functools.cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sigaltstack.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


class OpenVinoModel(ExportedModel):
    """An OpenVINO IR (`.xml`) or ONNX file from `fastinst export`, compiled by OpenVINO for the CPU.

    `dtype`: "auto", "fp32", "bf16" (or "fp16", run as bf16): the precision of the layers an INT8 IR (`fastinst export
    --int8`, whose `dtype` reads "int8") keeps in float, and of the whole network otherwise; `threads`: OpenVINO's
    `INFERENCE_NUM_THREADS` (default torch's thread count, so `OMP_NUM_THREADS` / `--threads` hold for every backend).
    """

    backend = "openvino"

    def __init__(self, path: str | Path, cfg: Config | None = None, dtype: str = "auto", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError as e:
            raise FastInstError(
                f"the openvino backend is unavailable ({e}); pip install 'fastinst[openvino]'"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise FastInstError(f"{path}: no such OpenVINO IR or ONNX file")
        if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
            raise FastInstError(f"{path}: its weights {path.with_suffix('.bin').name} are missing beside it")
        self.core = ov.Core()
        try:
            if path.suffix.lower() == ".onnx":  # the ONNX reader only (read_model would try every format's)
                from openvino.frontend import FrontEndManager

                frontend = FrontEndManager().load_by_framework("onnx")
                self.network = frontend.convert(frontend.load(str(path)))
            else:
                self.network = self.core.read_model(str(path))
        except _ov_errors() as e:
            reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
            raise FastInstError(f"{path}: OpenVINO cannot read it ({reason})") from None
        meta = _ov_meta(self.network)
        super().__init__(path, meta, cfg, "OpenVINO")
        # the precision of the layers left in float: the hint OpenVINO compiles with
        self.float_dtype, self.dtype_reason = openvino_dtype(dtype)
        self.mask_dtype = torch.bfloat16 if self.float_dtype == "bf16" else torch.float32
        self.dtype = self.float_dtype
        if "fastinst.int8" in meta:  # `fastinst export --int8`: convolutions and matmuls are 8-bit in the file
            self.dtype = "int8"
            why = f", {self.dtype_reason}" if self.dtype_reason else ""
            self.dtype_reason = (
                f"INT8 IR calibrated on {meta['fastinst.int8']} images; other layers {self.float_dtype}{why}"
            )
        self.threads = int(threads or torch.get_num_threads())
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    def compiled(self, shape: tuple[int, ...]) -> Any:
        """The network compiled for input `shape` (B, 3, H, W); a dynamic file keeps the last few sizes."""
        key = shape if self.size is None else ()
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        network = self.network
        if self.size is None:  # one static shape per size compiles to faster code than a dynamic graph
            network = network.clone()
            network.reshape({network.inputs[0].get_any_name(): list(shape)})
        config = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.float_dtype],
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        try:
            with _keeping_signal_stack():
                compiled = self.core.compile_model(network, "CPU", config)
        except _ov_errors() as e:
            reason = str(e).strip().splitlines()[0][:200]
            raise FastInstError(f"{self.path}: OpenVINO cannot compile it ({reason})") from None
        self._compiled[key] = compiled
        while len(self._compiled) > COMPILED_SIZES:
            self._compiled.popitem(last=False)
        return compiled

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        array = images.float().contiguous().numpy()
        # copies in and out: OpenVINO keeps no pointer into memory Python frees (its zero-copy input would)
        out = self.compiled(tuple(array.shape))({0: array}, share_inputs=False, share_outputs=False)
        logits, masks = (np.asarray(out[i]) for i in (0, 1))
        return torch.from_numpy(logits.astype(np.float32, copy=False)), torch.from_numpy(masks.astype(np.float32))
