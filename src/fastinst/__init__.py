"""fastinst: FastInst real-time instance segmentation in pure PyTorch.

import fastinst
model = fastinst.build_model("fastinst-d1-r50")              # torch.nn.Module, official state-dict layout
fastinst.load_checkpoint(model, "fastinst_R50_ppm-fpn_x1_576_34.9.pth")
predictor = fastinst.load("fastinst-d1-r50", weights="...pth")   # results = predictor.predict("photo.jpg")
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "get_config", "load", "load_checkpoint"]


def get_config(name: str):
    from .config import get_config as _get

    return _get(name)


def build_model(name_or_cfg, overrides: list[str] | None = None):
    """A FastInst `nn.Module` for a variant name/alias/YAML path or a `Config`, randomly initialised."""
    from .config import Config, apply_overrides
    from .config import get_config as _get
    from .model.fastinst import FastInst

    cfg = name_or_cfg if isinstance(name_or_cfg, Config) else _get(name_or_cfg)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return FastInst(cfg)


def load_checkpoint(model, path, strict: bool = True):
    from .checkpoint import load_checkpoint as _load

    return _load(model, path, strict=strict)


def load(name: str, weights=None, device: str = "cpu", **kwargs):
    """A ready-to-use predictor: `fastinst.load("fastinst-d1-r50", weights="file.pth").predict(images)`."""
    from .engine.predictor import Predictor

    return Predictor.from_name(name, weights=weights, device=device, **kwargs)
