"""ONNX export of FastInst and an onnxruntime model with the PyTorch model's eval contract.

* `export_onnx(model, path, size=(H, W) | None, dynamic=False, opset=17)`: one graph from the normalised, padded
  image batch `images` (B, 3, H, W) float32 to `pred_logits` (B, Q, K+1) and `pred_masks` (B, Q, H/8, W/8).
  The config (JSON) and the input size are stored in the file's metadata, so `OnnxModel(path)` needs nothing else.
* `verify_onnx(model, path, image)`: onnxruntime vs PyTorch on one image; raises `FastInstError` when any output
  differs by more than 1e-3 × its largest magnitude, else returns the max abs difference.
* `OnnxModel(path)`: `__call__(batch)` takes and returns what `FastInst` does in eval mode (same normalise + pad
  maths, same `fastinst.model.postprocess.instances`), so `predict --backend onnxruntime` gives the same instances.

Export uses torch's TorchScript-based exporter (`dynamo=False`): it exports the whole model in seconds, handles the
top-k query selection and dynamic H/W through traced shapes, and needs no version conversion. The dynamo exporter
also works on the plain ResNet variants but is ~3x slower, emits opset 18 and converts down with warnings.
Two ops have no portable ONNX form, and are swapped for numerically equal stand-ins in a copy of the model, only while
exporting (the PyTorch model is never changed):
* `AdaptiveAvgPool2d(s)` with H, W not multiples of s (PPM sizes 3 and 6): two averaging matmuls built from the shape;
* torchvision's `deform_conv2d` (DCNv1, the -vd-dcn variants): one `grid_sample` (bilinear, zero padding,
  align_corners) gathers the 9 taps, a matmul applies the weight. ONNX's own `DeformConv` (opset 19) runs in
  onnxruntime >= 1.20 CPU but is missing in most other runtimes, so the decomposition is used at every opset.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import Config, from_dict, to_dict
from .errors import FastInstError
from .model.backbone import DeformConv
from .model.postprocess import instances
from .model.preprocess import resize_image, resize_shape

if TYPE_CHECKING:
    from .model.fastinst import FastInst

_M = TypeVar("_M", bound=nn.Module)

OPSETS = (17, 18)
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


def exportable_copy(model: _M) -> _M:
    """A deep copy of `model` (eval) with adaptive pooling and deformable convs replaced by the stand-ins above."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
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


def export_onnx(
    model: FastInst, path: str | Path, size: tuple[int, int] | None = None, dynamic: bool = False, opset: int = 17
) -> Path:
    """Write `model` as ONNX to `path`: `images` (B, 3, H, W) -> `pred_logits`, `pred_masks`; returns the path.

    Fixed (default): batch 1 and H x W = `size` (default: `default_size(cfg)`). `dynamic=True`: batch, H and W are
    free (multiples of 32 with H/16 x W/16 >= the query count, as the top-k size is fixed); `size` is then only the
    example traced (the default size when `size` is too small for that).
    """
    import onnx

    if opset not in OPSETS:
        raise FastInstError(f"opset {opset}: choose one of {', '.join(map(str, OPSETS))}")
    cfg: Config = model.cfg
    size = check_size(size or default_size(cfg), cfg.model.size_divisibility)
    if dynamic and not _enough_cells(size, cfg):
        size = default_size(cfg)  # a traced top-k over fewer cells than queries would make k shape-dependent
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(model.parameters())
    net = InferenceNet(exportable_copy(model)).to(device=param.device, dtype=torch.float32)
    example = torch.zeros(1, 3, *size, device=param.device)
    axes = None
    if dynamic:
        axes = {
            INPUT: {0: "batch", 2: "height", 3: "width"},
            OUTPUTS[0]: {0: "batch"},
            OUTPUTS[1]: {0: "batch", 2: "height_8", 3: "width_8"},
        }
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shape arithmetic, exporter deprecation notices
        torch.onnx.export(
            net,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    meta = {
        "fastinst.config": json.dumps(to_dict(cfg)),
        "fastinst.size": "dynamic" if dynamic else f"{size[0]},{size[1]}",
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
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
    return normalize_and_pad(batch, cfg)[0]


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
# onnxruntime model with the FastInst eval contract
# ---------------------------------------------------------------------------------------------------------------------


def normalize_and_pad(
    batch: list[dict], cfg: Config, size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """`FastInst.preprocess` maths: (uint8 - mean) / std, zero-padded bottom/right to a multiple of 32 (or `size`)."""
    mean = torch.tensor(cfg.model.pixel_mean).view(3, 1, 1)
    std = torch.tensor(cfg.model.pixel_std).view(3, 1, 1)
    images = [(torch.as_tensor(d["image"]).cpu().float() - mean) / std for d in batch]
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    div = cfg.model.size_divisibility
    hp = -(-max(s[0] for s in sizes) // div) * div
    wp = -(-max(s[1] for s in sizes) // div) * div
    if size is not None:
        if hp > size[0] or wp > size[1]:
            raise FastInstError(
                f"image of {max(s[0] for s in sizes)}x{max(s[1] for s in sizes)} does not fit this "
                f"ONNX file's fixed input {size[0]}x{size[1]}; export with --dynamic or a larger --size"
            )
        hp, wp = size
    out = images[0].new_zeros(len(images), 3, hp, wp)
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
    return out, sizes


class OnnxModel:
    """An exported FastInst run by onnxruntime; `model(batch)` as `FastInst` in eval mode (see docs/DEVELOPING.md).

    Fixed-size files take images up to their size: smaller ones are zero-padded to it (as PyTorch pads a batch to its
    largest image), larger ones raise `FastInstError`. Fixed files run one image at a time.
    """

    def __init__(
        self,
        path: str | Path,
        cfg: Config | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
    ):
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
        self.max_detections = 100
        self.size = _fixed_size(meta)

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised padded (B, 3, H, W) -> pred_logits, pred_masks (torch tensors, CPU)."""
        logits, masks = self.session.run(list(OUTPUTS), {INPUT: images.float().contiguous().numpy()})
        return torch.from_numpy(logits), torch.from_numpy(masks)

    def __call__(self, batch: list[dict]) -> list[dict]:
        chunks = [batch] if self.size is None else [[d] for d in batch]
        results = []
        for chunk in chunks:
            images, sizes = normalize_and_pad(chunk, self.cfg, self.size)
            if self.size is None and not _enough_cells(images.shape[-2:], self.cfg):
                raise FastInstError(
                    f"{self.path}: a {images.shape[-2]}x{images.shape[-1]} input is too small for this "
                    f"dynamic ONNX file (needs H/16 x W/16 >= {self.cfg.model.num_queries} queries)"
                )
            logits, masks = self.forward_raw(images)
            padded = tuple(images.shape[-2:])
            for i, d in enumerate(chunk):
                original = (int(d.get("height", sizes[i][0])), int(d.get("width", sizes[i][1])))
                results.append(instances(logits[i], masks[i], padded, sizes[i], original, self.max_detections))
        return results
