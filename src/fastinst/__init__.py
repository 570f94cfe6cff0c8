"""fastinst: FastInst real-time instance segmentation in pure PyTorch.

import fastinst
predictor = fastinst.load("fastinst-d1-r50", weights="official")     # results = predictor.predict("photo.jpg")
predictor = fastinst.load("fastinst-d1-r50", weights="w.pth", backend="openvino")   # the same, compiled by OpenVINO
model = fastinst.load_model("runs/train/last.pth")                    # nn.Module; model.detect([rgb_uint8_array])
model = fastinst.build_model("fastinst-d1-r50")                       # random init, official state-dict layout
run = fastinst.fit("fastinst-d1-r50", "data/mine", weights="w.pth")  # train: run.output, run.metrics["AP"]
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "fit", "get_config", "load", "load_checkpoint", "load_model"]


def get_config(name: str):
    from .config import get_config as _get

    return _get(name)


def build_model(name_or_cfg, overrides: list[str] | None = None):
    """A FastInst `nn.Module` for a variant name/alias/YAML path or a `Config`, randomly initialised."""
    from .factory import build_model as _build

    return _build(name_or_cfg, overrides)


def load_checkpoint(model, path, strict: bool = True):
    from .checkpoint import load_checkpoint as _load

    return _load(model, path, strict=strict)


def load_model(model=None, weights=None, device: str = "auto", classes=None):
    """The one loader: a variant name / YAML / checkpoint, with weights (a file, "official" or None), in eval mode on
    `device` ("auto": CUDA, MPS, CPU). See `fastinst.factory.load_model`."""
    from .factory import load_model as _load_model

    return _load_model(model, weights, device, classes)


def fit(model, data, **kwargs):
    """Train `model` (a variant name, YAML or `Config`) on `data`, as `fastinst train` does; -> `TrainResult` (the run
    folder, the final metrics, the config, the trained model). Keywords: see `fastinst.engine.training.fit`."""
    from .engine.training import fit as _fit

    return _fit(model, data, **kwargs)


def load(
    model=None,
    weights=None,
    device: str = "auto",
    classes=None,
    dtype: str = "auto",
    backend: str = "torch",
    exported=None,
):
    """A ready-to-use predictor: `fastinst.load("fastinst-d1-r50", weights="file.pth").predict(images)`.

    `dtype`: "auto" (fp16 on CUDA, bf16 on CPUs with bf16 hardware: AMX, AVX512-BF16; else fp32), "fp32", "bf16"
    or "fp16" (see `Predictor`).
    `backend`: "torch", "onnxruntime" (an `exported` ONNX file) or "openvino" (an `exported` IR / ONNX file, or the
    weights exported once into the cache); see `fastinst.factory.load_backend`."""
    from .engine.predictor import Predictor
    from .factory import load_backend

    return Predictor(load_backend(backend, model, weights, device, classes, dtype, exported), dtype=dtype)
