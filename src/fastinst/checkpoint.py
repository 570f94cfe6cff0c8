"""Every way weights come in, safely: official release `.pth`, our checkpoints, torchvision / timm / detectron2
backbones.

* `read_state_dict(path)` -> {name: Tensor}: `torch.load(weights_only=True)` for `.pth/.pt/.bin`, a restricted
  unpickler (numpy arrays and plain containers only) for `.pkl`, `numpy.load(allow_pickle=False)` for `.npz`.
  Nothing in a file can run code.
* `load_checkpoint(model, path)`: a full FastInst state dict (official `{"model": ...}`, `module.`-prefixed DDP
  dicts, our training checkpoints); a mismatch raises `CheckpointError` naming the variant the file seems to be for.
* `load_backbone(model, path)`: ImageNet weights in torchvision, timm or detectron2 naming, renamed in memory.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError

# ---------------------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Allows only what a detectron2 backbone .pkl needs: numpy arrays/dtypes and builtin containers."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("collections", "OrderedDict"),
            ("builtins", "dict"),
            ("builtins", "list"),
            ("builtins", "tuple"),
            ("builtins", "set"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def _load_pkl(path: Path) -> dict:
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f, encoding="latin1").load()


def read_checkpoint(path: str | Path) -> dict:
    """The raw object stored in a weights file (a dict), read without executing anything from the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes), not a checkpoint")
    suffix = path.suffix.lower()
    try:
        if suffix == ".pkl":
            obj = _load_pkl(path)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                obj = {k: z[k] for k in z.files}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to unpickle ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Weights only load failed" in msg or "weights_only" in str(e):
            raise CheckpointError(
                f"{path}: refused to load: the file contains Python objects other than tensors "
                "(loading it could run code)"
            ) from None
        kind = (
            "truncated or corrupt"
            if isinstance(e, (EOFError, zipfile.BadZipFile))
            or "zip" in msg.lower()
            or "central directory" in msg
            or "failed finding" in msg
            else "not a readable checkpoint"
        )
        raise CheckpointError(f"{path}: {kind} ({msg[:160]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def to_state_dict(obj: dict) -> OrderedDict[str, torch.Tensor]:
    """Unwrap `{"model": ...}` / `{"state_dict": ...}`, strip `module.` (DDP) prefixes, turn arrays into tensors."""
    for key in ("model", "state_dict", "model_state"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    out = OrderedDict()
    for name, value in obj.items():
        if not isinstance(name, str):
            continue
        name = name.removeprefix("module.")
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            continue
        if isinstance(value, torch.Tensor):
            out[name] = value
    return out


def read_state_dict(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    sd = to_state_dict(read_checkpoint(path))
    if not sd:
        raise CheckpointError(f"{path}: holds no tensors (not a model checkpoint)")
    return sd


# ---------------------------------------------------------------------------------------------------------------------
# Full FastInst checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def _architecture(keys: set[str]) -> tuple[bool, int | str, int]:
    """(ResNet-vd?, depth, decoder layers) read off the state-dict keys of a full FastInst checkpoint."""
    vd = any(k.startswith("backbone.conv1.0.") for k in keys)
    stage3 = "layer3" if vd else "res4"
    blocks = {int(m.group(1)) for k in keys if (m := re.match(rf"backbone\.{stage3}\.(\d+)\.", k))}
    depth = {6: 50, 23: 101, 2: 18}.get(len(blocks), f"?({len(blocks)} res4 blocks)")
    layers = {
        int(m.group(1))
        for k in keys
        if (m := re.match(r"sem_seg_head\.predictor\.transformer_query_ffn_layers\.(\d+)\.", k))
    }
    return vd, depth, len(layers)


def published_variant(keys) -> str | None:
    """The published variant whose architecture a full FastInst state dict has (class count aside), or None."""
    from .config import PUBLISHED, get_config

    keys = set(keys)
    if not any(k.startswith("sem_seg_head.") for k in keys):
        return None
    vd, depth, layers = _architecture(keys)
    for official in PUBLISHED:
        c = get_config(official).model
        if (c.backbone == "resnet_vd") == vd and c.depth == depth and c.dec_layers == layers:
            return official
    return None


def guess_variant(keys) -> str:
    """Describe which FastInst variant a set of state-dict keys belongs to (for error messages)."""
    keys = set(keys)
    if not any(k.startswith("sem_seg_head.") for k in keys):
        if any(k.startswith(("layer1.", "conv1.", "res2.", "stem.", "backbone.")) for k in keys):
            return "a backbone-only file (use --backbone-weights / load_backbone)"
        return "not a FastInst checkpoint"
    vd, depth, layers = _architecture(keys)
    name = f"FastInst-D{layers} {f'R{depth}-vd-DCN' if vd else f'R{depth}'}"
    official = published_variant(keys)
    return f"{name} ({official})" if official else name


def load_checkpoint(model: nn.Module, source, strict: bool = True, label: str | None = None) -> dict:
    """Load a FastInst checkpoint (path or state dict) into `model`; returns the file's extra entries (iteration...)."""
    label = label or (str(source) if isinstance(source, (str, Path)) else "state dict")
    raw = read_checkpoint(source) if isinstance(source, (str, Path)) else dict(source)
    sd = to_state_dict(raw)
    if not sd:
        raise CheckpointError(f"{label}: holds no tensors (not a model checkpoint)")
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    # the criterion buffer is a loss constant: files without it (or with only one copy) are fine
    missing = [k for k in missing if not k.endswith("criterion.empty_weight")]
    shape = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape
    ]
    if strict and (missing or unexpected or shape):
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        if shape:
            problems.append(f"{len(shape)} mis-shaped (first: {'; '.join(shape[:2])})")
        name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
        raise CheckpointError(
            f"{label}: does not fit {name}: it looks like {guess_variant(sd)}; " + "; ".join(problems)
        )
    usable = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    for k in [k for k in own if k.endswith("criterion.empty_weight") and k not in usable]:
        usable[k] = own[k]
    model.load_state_dict(usable, strict=strict)
    return {k: v for k, v in raw.items() if k not in ("model", "state_dict")} if isinstance(raw, dict) else {}


_CLASS_SIZED = ("class_embed_layers", "proposal_cls_logits", "empty_weight")


def transfer_checkpoint(model: nn.Module, sd: dict[str, torch.Tensor], path: str | Path) -> str:
    """Initialise `model` for fine-tuning from the state dict `sd` of a FastInst checkpoint of the same variant (read
    from `path`, named in messages); -> the line to print.

    Every tensor is copied except the class-sized ones (class heads, proposal classifier, `empty_weight`) when the
    checkpoint has another class count: those keep their fresh initialisation and the line names them. A checkpoint
    of another variant is refused with the same one-line message as `load_checkpoint` (eval, predict)."""
    own = model.state_dict()
    heads = [
        k
        for k in own
        if k in sd
        and sd[k].shape != own[k].shape
        and any(part in k for part in _CLASS_SIZED)
        and sd[k].shape[1:] == own[k].shape[1:]
    ]
    load_checkpoint(model, {**sd, **{k: own[k] for k in heads}}, strict=True, label=str(path))
    line = f"transferred {len(own) - len(heads)}/{len(own)} tensors from {path}"
    if heads:
        classes = getattr(model, "num_classes", "?")
        line += f"; re-initialised for {classes} classes: {len(heads)} class-head tensors ({', '.join(heads[:3])}, ...)"
    return line


# ---------------------------------------------------------------------------------------------------------------------
# ImageNet backbones
# ---------------------------------------------------------------------------------------------------------------------

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


def backbone_state_dict(sd: dict, backbone: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Rename an ImageNet state dict (torchvision, timm or detectron2 names, with or without `backbone.`) to ours."""
    own = backbone.state_dict()
    sd = OrderedDict((k.removeprefix("backbone."), v) for k, v in sd.items())
    torchvision_names = "conv1.weight" in sd or any(k.startswith("layer1.") for k in sd)
    if "stem.conv1.weight" in own and torchvision_names:
        sd = OrderedDict((n, v) for k, v in sd.items() if (n := torchvision_to_detectron2(k)) is not None)
    return OrderedDict((k, v) for k, v in sd.items() if not (k.endswith("num_batches_tracked") or k.startswith("fc.")))


def load_backbone(model: nn.Module, source) -> tuple[list[str], list[str]]:
    """Initialise `model.backbone` from an ImageNet file; DCN offsets stay zero. Returns (missing, unexpected)."""
    label = str(source)
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


def _depth(backbone: nn.Module) -> int:
    stages = [
        m for n, m in backbone.named_children() if n.startswith(("res", "layer")) and isinstance(m, nn.Sequential)
    ]
    blocks = sum(len(m) for m in stages)
    return {8: 18, 16: 50, 33: 101}.get(blocks, blocks)
