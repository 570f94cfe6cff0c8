"""ONNX export of FastInst and an onnxruntime model with the PyTorch model's inference contract.

* `export_onnx(model, path, size=(H, W) | None, dynamic=False, opset=18)`: one graph from the normalised, padded
  image batch `images` (B, 3, H, W) float32 to `pred_logits` (B, Q, K+1) and `pred_masks` (B, Q, H/8, W/8).
  The config (JSON, with the class names and category ids), the class names, the category ids and the input size are
  stored in the file's metadata, so `OnnxModel(path)` needs nothing else.
* `verify_onnx(model, path, image)`: onnxruntime vs PyTorch on one image; raises `FastInstError` when any output
  differs by more than 1e-3 × its largest magnitude, else returns the max abs difference.
* `OnnxModel(path)`: `detect(images, score_threshold, max_detections)` and `__call__(batch, ...)` exactly as
  `FastInst.detect` / `FastInst.forward` in eval (same resize, same `fastinst.model.preprocess.normalize_and_pad`, same
  `fastinst.model.postprocess.instances`), plus `cfg`, `num_classes`, `names`, `category_ids`: a drop-in model for
  the `Predictor` (`predict --backend onnxruntime`).

Export uses torch's current exporter (`torch.onnx.export(..., dynamo=True)`: `torch.export` captures the graph,
onnxscript translates and optimises it). Its operators start at opset 18, and onnx's version converter cannot take
its graphs down to 17 (no adapter for Split-18, non-constant ReduceMean axes), so opset 17 alone is written by the
legacy TorchScript exporter, with a warning. Dynamic files (`dynamic=True`) have a free batch and H, W = 32 × free
sizes; the query count is `min(num_queries, H/16 × W/16)` inside the graph, as in PyTorch.
Two ops are swapped for numerically equal stand-ins in a copy of the model, only while exporting (the PyTorch model is
never changed), and only where the exporter needs them:
* `AdaptiveAvgPool2d(s)` with H, W not multiples of s (PPM sizes 3 and 6), for dynamic H/W and the legacy exporter:
  two averaging matmuls built from the shape. (torch's decomposition of adaptive pooling bakes the traced size into
  the graph, which then fails in onnxruntime at any other size; at a fixed size it exports as is.)
* torchvision's `deform_conv2d` (DCNv1, the -vd-dcn variants), always: one `grid_sample` (bilinear, zero padding,
  align_corners) gathers the 9 taps, a matmul applies the weight. The dynamo exporter maps it to ONNX `DeformConv`,
  which needs opset 19 (an invalid graph at 18) and runs in onnxruntime >= 1.20 CPU but is missing in most other
  runtimes, so the decomposition is used at every opset.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import Config, from_dict, to_dict
from .errors import FastInstError
from .files import atomic_path, temp_path
from .model.backbone import DeformConv
from .model.postprocess import instances
from .model.preprocess import normalize_and_pad, resize_image, resize_shape, to_model_input

if TYPE_CHECKING:
    from .model.fastinst import FastInst

_M = TypeVar("_M", bound=nn.Module)

OPSETS = (17, 18, 19, 20)
DYNAMO_OPSET = 18  # the lowest opset torch's dynamo exporter writes (its torchlib implementations start there)
INPUT, OUTPUTS = "images", ("pred_logits", "pred_masks")
RTOL = 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# Export-only stand-ins
# ---------------------------------------------------------------------------------------------------------------------


def _pool_matrix(n, size: int, like: torch.Tensor) -> torch.Tensor:
    """(size, n) averaging matrix of adaptive pooling: row i averages [floor(i n / s), ceil((i + 1) n / s))."""
    i = torch.arange(size, device=like.device)
    start = torch.div(i * n, size, rounding_mode="floor")
    end = torch.div((i + 1) * n + size - 1, size, rounding_mode="floor")
    pos = torch.arange(n, device=like.device)
    inside = ((pos[None] >= start[:, None]) & (pos[None] < end[:, None])).to(like.dtype)
    return inside / inside.sum(1, keepdim=True)


class ExportAdaptiveAvgPool2d(nn.Module):
    """`nn.AdaptiveAvgPool2d(size)` as two matmuls (exportable for any H, W; equal up to float rounding)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = _pool_matrix(x.shape[-2], self.size, x)  # (s, H)
        pw = _pool_matrix(x.shape[-1], self.size, x)  # (s, W)
        return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))  # (B, C, s, s)


class ExportDeformConv(nn.Module):
    """`DeformConv` (3x3, padding 1, one offset group, no mask/bias) as grid_sample + matmul."""

    def __init__(self, conv: DeformConv):
        super().__init__()
        self.stride = conv.stride
        self.weight = conv.weight

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        x, offset = x.float(), offset.float()
        b, c, h, w = x.shape
        ho, wo = offset.shape[-2:]
        off = offset.reshape(b, 9, 2, ho, wo)  # tap k = 3i + j: (dy, dx)
        taps = torch.arange(9, device=x.device)
        ki = torch.div(taps, 3, rounding_mode="floor").to(x.dtype).view(1, 9, 1, 1)
        kj = (taps % 3).to(x.dtype).view(1, 9, 1, 1)
        ys = (torch.arange(ho, device=x.device) * self.stride - 1).to(x.dtype).view(1, 1, -1, 1)
        xs = (torch.arange(wo, device=x.device) * self.stride - 1).to(x.dtype).view(1, 1, 1, -1)
        py = ys + ki + off[:, :, 0]  # (B, 9, Ho, Wo) sample rows
        px = xs + kj + off[:, :, 1]
        grid = torch.stack([px * (2.0 / (w - 1)) - 1.0, py * (2.0 / (h - 1)) - 1.0], dim=-1)
        cols = F.grid_sample(
            x, grid.reshape(b, 9 * ho, wo, 2), mode="bilinear", padding_mode="zeros", align_corners=True
        )  # (B, C, 9 Ho, Wo)
        cols = cols.reshape(b, c * 9, ho * wo)
        out = torch.matmul(self.weight.float().reshape(self.weight.shape[0], c * 9), cols)
        return out.reshape(b, -1, ho, wo)


def exportable_copy(model: _M, pooling: bool = True) -> _M:
    """A deep copy of `model` (eval) with deformable convs — and adaptive pooling if `pooling` — replaced by the
    stand-ins above."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if pooling and isinstance(child, nn.AdaptiveAvgPool2d):
                size = child.output_size
                if isinstance(size, tuple) and len(set(size)) == 1:
                    size = size[0]
                if not isinstance(size, int):
                    raise FastInstError(f"cannot export adaptive pooling to {size}")
                setattr(module, name, ExportAdaptiveAvgPool2d(size))
            elif isinstance(child, DeformConv):
                setattr(module, name, ExportDeformConv(child))
    return model


class InferenceNet(nn.Module):
    """Normalised padded images (B, 3, H, W) -> (pred_logits, pred_masks) of a FastInst model in eval mode."""

    def __init__(self, model: FastInst):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.sem_seg_head.predictor(self.model.features(images))
        return out["pred_logits"], out["pred_masks"]


# ---------------------------------------------------------------------------------------------------------------------
# Export and verification
# ---------------------------------------------------------------------------------------------------------------------


def default_size(cfg: Config) -> tuple[int, int]:
    """The padded input of a 480x640 (COCO-typical) photo at the variant's test resize, e.g. 576x768 for D1."""
    h, w = resize_shape(480, 640, cfg.input.min_size_test, cfg.input.max_size_test)
    div = cfg.model.size_divisibility
    return -(-h // div) * div, -(-w // div) * div


def _enough_cells(size: Sequence[int], cfg: Config) -> bool:
    """Whether the stride-16 map of a `size` input has at least as many cells as the model has queries."""
    return (size[0] // 16) * (size[1] // 16) >= cfg.model.num_queries


def check_size(size, div: int) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    if h < 2 * div or w < 2 * div or h % div or w % div:
        up = (max(-(-h // div) * div, 2 * div), max(-(-w // div) * div, 2 * div))
        raise FastInstError(
            f"export size {h}x{w}: height and width must be multiples of {div} and at least "
            f"{2 * div} (the padded batch), e.g. {up[0]} {up[1]}"
        )
    return h, w


# the loggers torch.onnx.export reaches (onnxscript's optimiser logs "Skipping constant folding for op Split ..." as
# warnings); while exporting they pass only errors
_EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Around `torch.onnx.export`: its progress prints (stdout), its log records below ERROR and its warnings are
    held back, since they are about the exporter's own work and not the user's (a clean export says nothing). Errors
    are kept: records at ERROR and above still reach stderr, and if the export raises, the prints held back are written
    to stderr before the exception goes on, so a real failure keeps its explanation."""
    held = io.StringIO()
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(held):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        if held.getvalue().strip():
            sys.stderr.write(held.getvalue().rstrip("\n") + "\n")
        raise
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export_dynamo(net: nn.Module, example: torch.Tensor, dynamic: bool, div: int, opset: int):
    """`net` as an ONNX ModelProto through `torch.export` + onnxscript (torch.onnx.export(dynamo=True))."""
    shapes = None
    if dynamic:
        from torch.export import Dim

        # H and W are free multiples of `div` (at least 2 of them, as `check_size` asks): the graph may rely on it
        shapes = ({0: Dim("batch"), 2: div * Dim("height_div", min=2), 3: div * Dim("width_div", min=2)},)
    with _quiet_exporter():
        program = torch.onnx.export(
            net,
            (example,),
            None,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_shapes=shapes,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    if program is None:  # only the TorchScript exporter returns None
        raise FastInstError("torch.onnx.export(dynamo=True) returned no program")
    return program.model_proto


def _export_torchscript(net: nn.Module, example: torch.Tensor, dynamic: bool, opset: int, path: Path):
    """`net` as an ONNX ModelProto through the legacy TorchScript exporter (only for opsets below 18)."""
    import onnx

    axes = None
    if dynamic:
        axes = {
            INPUT: {0: "batch", 2: "height", 3: "width"},
            OUTPUTS[0]: {0: "batch"},
            OUTPUTS[1]: {0: "batch", 2: "height_8", 3: "width_8"},
        }
    with _quiet_exporter():
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    return onnx.load(str(path))


def export_onnx(
    model: FastInst,
    path: str | Path,
    size: tuple[int, int] | None = None,
    dynamic: bool = False,
    opset: int = DYNAMO_OPSET,
) -> Path:
    """Write `model` as ONNX to `path`: `images` (B, 3, H, W) -> `pred_logits`, `pred_masks`; returns the path.

    Fixed (default): batch 1 and H x W = `size` (default: `default_size(cfg)`). `dynamic=True`: batch, H and W are
    free (H, W multiples of 32, at least 64); `size` is then only the example traced. Opsets 18-20 use torch's dynamo
    exporter; 17 falls back to the legacy TorchScript exporter with a warning (see the module docstring), and its
    dynamic files need H/16 x W/16 >= the query count (the traced top-k size is fixed there).
    """
    import onnx

    from .model.fastinst import class_metadata

    if opset not in OPSETS:
        raise FastInstError(f"opset {opset}: choose one of {', '.join(map(str, OPSETS))}")
    cfg: Config = model.cfg
    div = cfg.model.size_divisibility
    size = check_size(size or default_size(cfg), div)
    legacy = opset < DYNAMO_OPSET
    if dynamic and legacy and not _enough_cells(size, cfg):
        size = default_size(cfg)  # a traced top-k over fewer cells than queries would make k shape-dependent
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(model.parameters())
    # the adaptive-pooling stand-in only where the exporter needs it (see the module docstring)
    net = InferenceNet(exportable_copy(model, pooling=dynamic or legacy)).eval()
    net = net.to(device=param.device, dtype=torch.float32)
    # batch 2 for a dynamic file: torch.export specialises a traced size of 1 to a constant
    example = torch.zeros(2 if dynamic else 1, 3, *size, device=param.device)
    tmp = temp_path(path)
    with torch.no_grad():
        if legacy:
            warnings.warn(
                f"opset {opset}: torch's dynamo exporter writes opset {DYNAMO_OPSET} and later, and onnx cannot "
                f"convert its graph down (no adapter for Split-{DYNAMO_OPSET}); exporting with the legacy "
                f"TorchScript exporter instead. Use opset {DYNAMO_OPSET} or later unless a runtime needs {opset}.",
                UserWarning,
                stacklevel=2,
            )
            proto = _export_torchscript(net, example, dynamic, opset, tmp)
        else:
            proto = _export_dynamo(net, example, dynamic, div, opset)
    names, ids = class_metadata(cfg)
    meta = {
        "fastinst.config": json.dumps(to_dict(cfg)),
        "fastinst.size": "dynamic" if dynamic else f"{size[0]},{size[1]}",
        "fastinst.names": json.dumps(names),
        "fastinst.category_ids": json.dumps(ids),
        "fastinst.exporter": "torchscript" if legacy else "dynamo",
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    with atomic_path(path) as final_tmp:
        onnx.save(proto, str(final_tmp))
    tmp.unlink(missing_ok=True)  # the legacy exporter's scratch file
    return path


def _ort_errors() -> tuple[type[Exception], ...]:
    """What onnxruntime raises for a file or option it cannot use: the exception classes of its C++ core (Fail,
    InvalidProtobuf, NoSuchFile, InvalidGraph, ..., which derive from Exception only) and the ValueError / TypeError /
    RuntimeError / OSError of its Python wrapper."""
    from onnxruntime.capi import onnxruntime_pybind11_state as core

    native = tuple(v for v in vars(core).values() if isinstance(v, type) and issubclass(v, Exception))
    return (*native, ValueError, TypeError, RuntimeError, OSError)


def _session(path: str | Path, providers: list[str] | None = None, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
    except _ort_errors() as e:
        raise FastInstError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None


def _fixed_size(meta: dict[str, str]) -> tuple[int, int] | None:
    """The fixed (H, W) input an exported file's metadata records; None for a dynamic file."""
    fixed = meta.get("fastinst.size", "dynamic")
    if fixed == "dynamic":
        return None
    h, w = (int(v) for v in fixed.split(","))
    return h, w


def _pad_batch(cfg: Config, batch: list[dict], size: tuple[int, int] | None = None):
    """A batch's uint8 (3, h, w) images -> normalised padded (B, 3, H, W) on the CPU and the [(h, w)], as
    `FastInst.preprocess` (to `size` for a fixed-size file)."""
    images = [torch.as_tensor(d["image"]).cpu() for d in batch]  # (3, h, w) uint8 each
    return normalize_and_pad(images, cfg.model.pixel_mean, cfg.model.pixel_std, cfg.model.size_divisibility, size)


def _input_tensor(model: FastInst, image: np.ndarray | None, size: tuple[int, int] | None) -> torch.Tensor:
    """A normalised, padded (1, 3, H, W) batch of `image` (resized to fill `size`, or at the test size if None)."""
    cfg: Config = model.cfg
    if image is None:
        from .data.synthetic import render_sample

        image = render_sample(0, "val", 0, 320)[0]
    if size is not None:
        image = resize_image(image, size)
    else:
        h, w = image.shape[:2]
        image = resize_image(image, resize_shape(h, w, cfg.input.min_size_test, cfg.input.max_size_test))
    batch = [{"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}]
    return _pad_batch(cfg, batch)[0]


def verify_onnx(model: FastInst, path: str | Path, image: np.ndarray | None = None, rtol: float = RTOL) -> float:
    """Max abs difference between onnxruntime and PyTorch outputs on `image` (uint8 H x W x 3 RGB; default a
    synthetic scene). Raises `FastInstError` if an output differs by more than `rtol` × its largest magnitude."""
    session = _session(path)
    size = _fixed_size(session.get_modelmeta().custom_metadata_map)
    param = next(model.parameters())
    images = _input_tensor(model, image, size)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ref = InferenceNet(model)(images.to(param.device))
    model.train(was_training)
    got = session.run(list(OUTPUTS), {INPUT: images.numpy()})
    worst = 0.0
    for name, r, g in zip(OUTPUTS, ref, got, strict=True):
        r = r.float().cpu().numpy()
        if r.shape != g.shape:
            raise FastInstError(f"{path}: {name} has shape {g.shape} in onnxruntime, {r.shape} in PyTorch")
        diff = float(np.abs(r - g).max())
        scale = float(np.abs(r).max())
        worst = max(worst, diff)
        if not diff <= rtol * max(scale, 1e-6):
            raise FastInstError(
                f"{path}: onnxruntime and PyTorch disagree on {name}: max abs diff {diff:.3g} > {rtol:g} x {scale:.3g}"
            )
    return worst


# ---------------------------------------------------------------------------------------------------------------------
# onnxruntime model with the FastInst inference contract
# ---------------------------------------------------------------------------------------------------------------------


class OnnxModel:
    """An exported FastInst run by onnxruntime, with `FastInst`'s inference contract: `detect(images, ...)`,
    `model(batch, ...)` as in eval mode, `cfg`, `num_classes`, `names`, `category_ids` (see docs/DEVELOPING.md).

    Fixed-size files take images up to their size: smaller ones are zero-padded to it (as PyTorch pads a batch to its
    largest image), larger ones raise `FastInstError`. Fixed files run one image at a time, dynamic ones a batch at a
    time (padded to its largest image, as PyTorch).
    """

    device = torch.device("cpu")  # outputs are CPU tensors (what `Predictor.device` reads)

    def __init__(
        self,
        path: str | Path,
        cfg: Config | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
    ):
        from .model.fastinst import class_metadata

        self.path = Path(path)
        if not self.path.is_file():
            raise FastInstError(f"{self.path}: no such ONNX file")
        self.session = _session(self.path, providers, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if cfg is None:
            if "fastinst.config" not in meta:
                raise FastInstError(
                    f"{self.path}: not written by `fastinst export` (no config in its metadata); pass the config"
                )
            cfg = from_dict(json.loads(meta["fastinst.config"]))
        self.cfg = cfg
        self.num_classes = cfg.model.num_classes
        names, ids = class_metadata(cfg)
        self.names: list[str] = [str(n) for n in _json_list(meta, "fastinst.names", names, self.path)]
        self.category_ids: list[int] = [int(i) for i in _json_list(meta, "fastinst.category_ids", ids, self.path)]
        if len(self.names) != self.num_classes or len(self.category_ids) != self.num_classes:
            raise FastInstError(
                f"{self.path}: {len(self.names)} class names and {len(self.category_ids)} category ids in its "
                f"metadata for {self.num_classes} classes"
            )
        self.max_detections = 100
        self.size = _fixed_size(meta)
        # TorchScript-exported dynamic files trace a fixed top-k size: they need enough stride-16 cells
        self._needs_cells = self.size is None and meta.get("fastinst.exporter", "torchscript") == "torchscript"

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised padded (B, 3, H, W) -> pred_logits (B, Q, K+1), pred_masks (B, Q, H/8, W/8) (CPU tensors)."""
        logits, masks = self.session.run(list(OUTPUTS), {INPUT: images.float().contiguous().numpy()})
        return torch.from_numpy(logits), torch.from_numpy(masks)

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
                images, sizes = self._preprocess(chunk)  # (B, 3, H, W), [(h, w)] before padding
                logits, masks = self.forward_raw(images)  # (B, Q, K+1), (B, Q, H/8, W/8)
                padded = (int(images.shape[-2]), int(images.shape[-1]))
                for i, d in enumerate(chunk):
                    original = (int(d.get("height", sizes[i][0])), int(d.get("width", sizes[i][1])))
                    results.append(instances(logits[i], masks[i], padded, sizes[i], original, k, score_threshold))
        return results

    def _preprocess(self, chunk: list[dict]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        try:
            images, sizes = _pad_batch(self.cfg, chunk, self.size)
        except ValueError as e:  # larger than the fixed input of this file
            raise FastInstError(f"{self.path}: {e}; export with --dynamic or a larger --size") from None
        if self._needs_cells and not _enough_cells(images.shape[-2:], self.cfg):
            raise FastInstError(
                f"{self.path}: a {images.shape[-2]}x{images.shape[-1]} input is too small for this "
                f"dynamic ONNX file (needs H/16 x W/16 >= {self.cfg.model.num_queries} queries)"
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
