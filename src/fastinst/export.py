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
One op is swapped for a numerically equal stand-in in a copy of the model, only while exporting (the PyTorch model
is never changed), and only where the exporter needs it:
* `AdaptiveAvgPool2d(s)` with H, W not multiples of s (PPM sizes 3 and 6), for dynamic H/W and the legacy exporter:
  two averaging matmuls built from the shape. (torch's decomposition of adaptive pooling bakes the traced size into
  the graph, which then fails in onnxruntime at any other size; at a fixed size it exports as is.)
The deformable convs of the -vd-dcn variants need nothing: without autograd (export runs under `torch.no_grad`) they
are `fastinst.model.backbone.sampled_deform_conv`, a `grid_sample` and a matmul. (torchvision's `deform_conv2d`
exports to ONNX `DeformConv`, which needs opset 19 and is missing in most runtimes.)
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import nn

from .config import Config, to_dict
from .errors import FastInstError
from .files import atomic_path, temp_path
from .model.preprocess import resize_image, resize_shape
from .runtimes import INPUT, OUTPUTS, ExportedModel, OnnxModel, enough_cells, pad_batch

if TYPE_CHECKING:
    from .model.fastinst import FastInst

_M = TypeVar("_M", bound=nn.Module)

__all__ = [
    "INPUT",
    "OUTPUTS",
    "OnnxModel",
    "calibration_images",
    "export_onnx",
    "export_openvino",
    "quantize_network",
    "verify_onnx",
    "verify_runtime",
]

OPSETS = (17, 18, 19, 20)
DYNAMO_OPSET = 18  # the lowest opset torch's dynamo exporter writes (its torchlib implementations start there)
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


def exportable_copy(model: _M, pooling: bool = True) -> _M:
    """A deep copy of `model` (eval) with adaptive pooling replaced by the stand-in above if `pooling`."""
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
    return model


class InferenceNet(nn.Module):
    """Normalised padded images (B, 3, H, W) -> (pred_logits, pred_masks) of a FastInst model in eval mode."""

    def __init__(self, model: FastInst):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_raw(images)


# ---------------------------------------------------------------------------------------------------------------------
# Export and verification
# ---------------------------------------------------------------------------------------------------------------------


def default_size(cfg: Config) -> tuple[int, int]:
    """The padded input of a 480x640 (COCO-typical) photo at the variant's test resize, e.g. 576x768 for D1."""
    h, w = resize_shape(480, 640, cfg.input.min_size_test, cfg.input.max_size_test)
    div = cfg.model.size_divisibility
    return -(-h // div) * div, -(-w // div) * div


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
    if dynamic and legacy and not enough_cells(size, cfg):
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
    return pad_batch(cfg, batch)[0]


def verify_runtime(
    model: FastInst, runtime: ExportedModel, image: np.ndarray | None = None, rtol: float = RTOL
) -> float:
    """Max abs difference between an exported runtime's network (`runtime.forward_raw`, in its own precision) and
    PyTorch's fp32 outputs on `image` (uint8 H x W x 3 RGB; default a synthetic scene). Raises `FastInstError` if an
    output differs by more than `rtol` × its largest magnitude."""
    worst = 0.0
    for name, r, g in _both_outputs(model, runtime, image):
        diff = float(np.abs(r - g).max())
        scale = float(np.abs(r).max())
        worst = max(worst, diff)
        if not diff <= rtol * max(scale, 1e-6):
            raise FastInstError(
                f"{runtime.path}: {runtime.backend} and PyTorch disagree on {name}: max abs diff {diff:.3g} > "
                f"{rtol:g} x {scale:.3g}"
            )
    return worst


def _both_outputs(
    model: FastInst, runtime: ExportedModel, image: np.ndarray | str | Path | None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(output name, PyTorch fp32, the runtime's)] on one image, as float32 arrays of equal shapes."""
    if image is not None and not isinstance(image, np.ndarray):
        from .data.images import read_image

        image = read_image(image)
    param = next(model.parameters())
    images = _input_tensor(model, image, runtime.size)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ref = InferenceNet(model)(images.to(param.device))
    model.train(was_training)
    got = runtime.forward_raw(images)
    both = []
    for name, expected, actual in zip(OUTPUTS, ref, got, strict=True):
        r, g = expected.float().cpu().numpy(), actual.float().cpu().numpy()
        if r.shape != g.shape:
            raise FastInstError(
                f"{runtime.path}: {name} has shape {g.shape} in {runtime.backend}, {r.shape} in PyTorch"
            )
        both.append((name, r, g))
    return both


def verify_onnx(model: FastInst, path: str | Path, image: np.ndarray | None = None, rtol: float = RTOL) -> float:
    """`verify_runtime` of the ONNX file `path` in onnxruntime."""
    return verify_runtime(model, OnnxModel(path, model.cfg), image, rtol)


def export_openvino(
    model: FastInst,
    path: str | Path,
    size: tuple[int, int] | None = None,
    dynamic: bool = False,
    opset: int = DYNAMO_OPSET,
    calibration: Sequence[np.ndarray | str | Path] | None = None,
) -> Path:
    """Write `model` as an OpenVINO IR: `path` (.xml, the graph) and the .bin beside it, the same graph and metadata
    as `export_onnx` (converted by `openvino.convert_model`, which keeps the ONNX metadata under rt_info `framework`).
    Both files appear only once complete. Returns the .xml path.

    `calibration` (images: RGB uint8 arrays or files) makes an INT8 IR: NNCF's post-training quantization
    (`quantize_network`) with the statistics of these images, each resized and padded as the runtime will feed it (to
    its own size in a `dynamic` IR, fitted into `size` in a fixed one). Without it the weights stay fp32."""
    try:
        import openvino as ov
    except ImportError as e:
        raise FastInstError(f"OpenVINO export is unavailable ({e}); pip install 'fastinst[openvino]'") from None
    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise FastInstError(f"{path}: an OpenVINO IR is written as NAME.xml (+ NAME.bin)")
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
    try:
        onnx_file = export_onnx(model, scratch / "model.onnx", size=size, dynamic=dynamic, opset=opset)
        with _quiet_exporter():
            network = ov.convert_model(str(onnx_file))
        if calibration is not None:
            fixed = None if dynamic else (size or default_size(model.cfg))
            network = quantize_network(model, network, calibration, fixed)
            network.set_rt_info(str(len(calibration)), ["framework", "fastinst.int8"])
        ov.save_model(network, str(scratch / "model.xml"), compress_to_fp16=False)
        os.replace(scratch / "model.bin", path.with_suffix(".bin"))  # the weights first: an .xml is never alone
        os.replace(scratch / "model.xml", path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


# NNCF and the torch extension loader it imports log their progress; while quantizing they pass only errors
_QUANTIZER_LOGGERS = ("nncf", "torch.utils.cpp_extension")


def shape_matmuls(network: Any) -> list[str]:
    """The names of the MatMuls in an OpenVINO network that take an operand computed from the input's shape alone:
    the averaging matrices of the adaptive-pooling stand-in (`ExportAdaptiveAvgPool2d`) of a dynamic graph."""
    values: set[str] = set()  # ops whose output depends on the input's values
    shapes: set[str] = set()  # ops computed from its shape only
    found = []
    for op in network.get_ordered_ops():
        name, kind = op.get_friendly_name(), op.get_type_name()
        sources = [i.get_source_output().get_node().get_friendly_name() for i in op.inputs()]
        if kind == "Parameter" or (kind != "ShapeOf" and any(s in values for s in sources)):
            values.add(name)
        elif kind == "ShapeOf" or any(s in shapes for s in sources):
            shapes.add(name)
        if kind == "MatMul" and name in values and any(s in shapes for s in sources):
            found.append(name)
    return found


def quantize_network(
    model: FastInst, network: Any, images: Sequence[np.ndarray | str | Path], size: tuple[int, int] | None
) -> Any:
    """An OpenVINO network (converted from `model`'s export) quantized to INT8 by NNCF on `images`.

    Activations and weights of convolutions and matmuls become 8-bit (per-channel weights, activation ranges from the
    images' statistics, fast bias correction); `ModelType.TRANSFORMER` keeps the decoder's softmax and layer-norm
    inputs in float, which keeps more instances identical to fp32 on the fixture weights than the default scheme
    (43 vs 34 of 55 at mask IoU >= 0.9, same speed). Each image is fed as the runtime will feed it: the test resize,
    normalised, padded to a multiple of 32 (`size` None: a dynamic network) or fitted into the fixed `size`.

    The pooling stand-in's shape-made matrices (`shape_matmuls`) stay float, which NNCF needs on a dynamic network
    ("QConfigs for unified scale group ... are not equal"). Demo mask AP: benchmarks/README.md."""
    try:
        import nncf
    except ImportError as e:
        raise FastInstError(f"INT8 export needs NNCF ({e}); pip install 'fastinst[openvino]'") from None
    if not images:
        raise FastInstError("INT8 export: no calibration images")
    from .data.images import read_image

    cfg = model.cfg

    def item(image: np.ndarray | str | Path) -> np.ndarray:
        """An image as the runtime feeds it: resized (and shrunk to fit a fixed `size`), normalised, padded."""
        array = image if isinstance(image, np.ndarray) else read_image(image)
        h, w = resize_shape(array.shape[0], array.shape[1], cfg.input.min_size_test, cfg.input.max_size_test)
        if size is not None and (h > size[0] or w > size[1]):
            scale = min(size[0] / h, size[1] / w)
            h, w = max(1, int(h * scale)), max(1, int(w * scale))
        array = resize_image(array, (h, w))
        batch = [{"image": torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))}]
        return pad_batch(cfg, batch, size)[0].numpy()  # (1, 3, H, W) float32

    stand_ins = shape_matmuls(network)
    loggers = [logging.getLogger(name) for name in _QUANTIZER_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with _quiet_exporter():
            return nncf.quantize(
                network,
                nncf.Dataset(list(images), item),
                subset_size=len(images),
                model_type=nncf.ModelType.TRANSFORMER,
                ignored_scope=nncf.IgnoredScope(names=stand_ins) if stand_ins else None,
            )
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def calibration_images(spec: str | Path, split: str = "train", count: int = 300) -> list[Path]:
    """`count` images spread evenly over split `split` of the dataset `spec` (any layout `load_dataset` reads), or
    over the image files of a plain folder / glob (`list_images`). Fewer when there are fewer."""
    from .data.images import list_images
    from .data.registry import load_dataset

    if count < 1:
        raise FastInstError(f"--calibration {count}: must be at least 1")
    try:
        files = [Path(r["file_name"]) for r in load_dataset(spec, split=split).records]
    except FastInstError:
        files = list_images(spec)  # a plain folder of photos: no annotations needed to calibrate
        if not files:
            raise
    if not files:
        raise FastInstError(f"{spec}: no images to calibrate INT8 on (split {split})")
    step = len(files) / min(count, len(files))
    return [files[int(i * step)] for i in range(min(count, len(files)))]
