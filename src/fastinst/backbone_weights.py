"""ImageNet backbone weights, renamed in memory to our ResNet layout: torchvision, timm, detectron2 and Caffe2/MSRA
(`R-50.pkl`) names.

* `load_backbone(model, path)`: `model.backbone` from an ImageNet file (read safely by `fastinst.checkpoint`); DCN
  offsets stay zero; a file of another depth is one `CheckpointError` line.
* `transfer_backbone(model, sd, path)`: the same from a state dict, -> the line `fastinst train` prints.
* `backbone_state_dict(sd, backbone)`: the renaming itself (`torchvision_to_detectron2`, `caffe2_to_detectron2`).

Full FastInst checkpoints (official releases, ours) are `fastinst.checkpoint`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .checkpoint import read_state_dict, to_state_dict
from .errors import CheckpointError

_BN_LEAVES = ("weight", "bias", "running_mean", "running_var")


def torchvision_to_detectron2(name: str) -> str | None:
    """`layer1.0.bn2.weight` -> `res2.0.conv2.norm.weight` etc.; None for keys with no counterpart (fc, counters)."""
    if name.startswith("fc.") or name.endswith("num_batches_tracked"):
        return None
    if name == "conv1.weight":
        return "stem.conv1.weight"
    if name.startswith("bn1."):
        return "stem.conv1.norm." + name[4:]
    m = re.match(r"layer(\d)\.(\d+)\.(.+)$", name)
    if not m:
        return name
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return f"res{stage}.{block}.{rest}"


_CAFFE2_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_CAFFE2_CONV = {"branch1": "shortcut", "branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3"}


def is_caffe2_names(keys) -> bool:
    """Whether state-dict keys use the Caffe2 / Detectron1 blob names of detectron2's MSRA ImageNet files
    (`R-50.pkl`, `R-101.pkl`: `conv1_w`, `res_conv1_bn_s`, `res2_0_branch2a_w`, ...)."""
    return any(re.match(r"res\d_\d+_branch", k) for k in keys) or "res_conv1_bn_s" in keys


def caffe2_to_detectron2(name: str) -> str | None:
    """`res2_0_branch2a_bn_s` -> `res2.0.conv1.norm.weight`, `conv1_w` -> `stem.conv1.weight`, etc.; None for the
    classifier (`fc1000_*`, `pred_*`) and optimizer state (`*_momentum`)."""
    if name.endswith("_momentum") or name.startswith(("fc1000_", "pred_", "fc_")):
        return None
    if name == "conv1_w":
        return "stem.conv1.weight"
    m = re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", name)
    if m:
        return "stem.conv1.norm." + _CAFFE2_BN[m.group(1)]
    m = re.fullmatch(r"res(\d)_(\d+)_(branch1|branch2[abc])_(w|bn_s|bn_b|bn_rm|bn_riv)", name)
    if not m:
        return name
    stage, block, conv, leaf = m.groups()
    prefix = f"res{stage}.{block}.{_CAFFE2_CONV[conv]}"
    return f"{prefix}.weight" if leaf == "w" else f"{prefix}.norm.{_CAFFE2_BN[leaf[3:]]}"


def backbone_state_dict(sd: dict, backbone: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Rename an ImageNet state dict (torchvision, timm, detectron2 or Caffe2/MSRA names, with or without
    `backbone.`) to ours.

    Caffe2 files hold each frozen BN as scale and bias only (`_bn_s`, `_bn_b`): their running statistics become
    mean 0 and variance 1 - eps, so the normalisation is exactly `x * scale + bias`, as in detectron2."""
    own = backbone.state_dict()
    sd = OrderedDict((k.removeprefix("backbone."), v) for k, v in sd.items())
    torchvision_names = "conv1.weight" in sd or any(k.startswith("layer1.") for k in sd)
    if "stem.conv1.weight" in own and is_caffe2_names(sd):
        sd = OrderedDict((n, v) for k, v in sd.items() if (n := caffe2_to_detectron2(k)) is not None)
        for key in list(sd):
            if key.endswith(".norm.weight"):
                norm = key.removesuffix(".weight")
                eps = float(getattr(backbone.get_submodule(norm), "eps", 1e-5))
                sd.setdefault(f"{norm}.running_mean", torch.zeros_like(sd[key]))
                sd.setdefault(f"{norm}.running_var", torch.ones_like(sd[key]) - eps)
    elif "stem.conv1.weight" in own and torchvision_names:
        sd = OrderedDict((n, v) for k, v in sd.items() if (n := torchvision_to_detectron2(k)) is not None)
    return OrderedDict((k, v) for k, v in sd.items() if not (k.endswith("num_batches_tracked") or k.startswith("fc.")))


def load_backbone(model: nn.Module, source, label: str | None = None) -> tuple[list[str], list[str]]:
    """Initialise `model.backbone` from an ImageNet file (or its state dict, named `label` in messages); DCN offsets
    stay zero. Returns (missing, unexpected)."""
    label = label or (str(source) if isinstance(source, (str, Path)) else "state dict")
    sd = read_state_dict(source) if isinstance(source, (str, Path)) else to_state_dict(dict(source))
    backbone = model.get_submodule("backbone")
    own = backbone.state_dict()
    renamed = backbone_state_dict(sd, backbone)
    usable = {k: v for k, v in renamed.items() if k in own}
    if not usable:
        raise CheckpointError(
            f"{label}: no tensor matches the {type(backbone).__name__} backbone (first keys: {', '.join(list(sd)[:3])})"
        )
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in usable.items() if v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{label}: backbone shapes differ ({'; '.join(bad[:2])}); wrong depth?")
    extra = [k for k in renamed if k not in own]
    if extra:
        raise CheckpointError(
            f"{label}: has {len(extra)} tensors the {type(backbone).__name__}-{_depth(backbone)} "
            f"backbone lacks (first: {', '.join(extra[:3])}); wrong depth?"
        )
    result = backbone.load_state_dict(usable, strict=False)
    missing = [k for k in result.missing_keys if "conv2_offset" not in k]
    if missing:
        raise CheckpointError(f"{label}: backbone file lacks {len(missing)} tensors (first: {', '.join(missing[:3])})")
    return result.missing_keys, extra


def transfer_backbone(model: nn.Module, sd: dict[str, torch.Tensor], path: str | Path) -> str:
    """`load_backbone` from the state dict `sd` of the ImageNet file `path` (as `read_state_dict` returns it), -> the
    line to print: "transferred N/M backbone tensors from PATH" (M counts the backbone's parameters and buffers; the
    rest, DCN offsets, start at zero)."""
    missing, _ = load_backbone(model, sd, label=str(path))
    total = len(model.get_submodule("backbone").state_dict())
    kind = " (Caffe2/MSRA names)" if is_caffe2_names(set(sd)) else ""
    line = f"transferred {total - len(missing)}/{total} backbone tensors from {path}{kind}"
    if missing:
        line += f"; {len(missing)} DCN offset tensors start at zero"
    return line


def _depth(backbone: nn.Module) -> int:
    stages = [
        m for n, m in backbone.named_children() if n.startswith(("res", "layer")) and isinstance(m, nn.Sequential)
    ]
    blocks = sum(len(m) for m in stages)
    return {8: 18, 16: 50, 33: 101}.get(blocks, blocks)
