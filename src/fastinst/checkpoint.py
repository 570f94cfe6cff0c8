"""Every way weights come in, safely: official release `.pth`, our checkpoints, torchvision / timm / detectron2
backbones.

* `read_state_dict(path)` -> {name: Tensor}: `torch.load(weights_only=True)` for `.pth/.pt/.bin`, a restricted
  unpickler (numpy arrays and plain containers only) for `.pkl`, `numpy.load(allow_pickle=False)` for `.npz`.
  Nothing in a file can run code.
* `load_checkpoint(model, path)`: a full FastInst state dict (official `{"model": ...}`, `module.`-prefixed DDP
  dicts, our training checkpoints); a mismatch raises `CheckpointError` naming the variant the file seems to be for.

ImageNet backbone weights (torchvision, timm, detectron2 naming; `load_backbone`) are `fastinst.backbone_weights`.
"""

from __future__ import annotations

import pickle
import re
import struct
import warnings
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


def _not_a_torch_file(path: Path) -> str | None:
    """Why the file cannot be a `torch.save` file, judged from its first bytes; None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK") or head[:1] == b"\x80":  # a zip archive (torch >= 1.6) or a binary pickle (legacy)
        return None
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer file, not the weights (fetch them with `git lfs pull`)"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page, not a checkpoint (a failed download?)"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file, not a checkpoint"
    return "not a PyTorch checkpoint (neither a zip archive nor a pickle)"


_READ_ERRORS = (
    pickle.UnpicklingError,  # forbidden globals, unknown opcodes
    RuntimeError,  # torch: bad zip records, "Invalid magic number"
    EOFError,
    zipfile.BadZipFile,
    ValueError,
    OSError,
    KeyError,  # the weights-only unpickler's memo lookups on garbage ("hello" -> KeyError 101)
    IndexError,  # ... and its stack pops ("pop from empty list")
    TypeError,
    AttributeError,
    struct.error,
)


def _read_error(path: Path, e: Exception) -> CheckpointError:
    """The one-line error for a weights file that `torch.load` / the unpicklers could not read."""
    text = str(e)
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    forbidden = re.search(r"GLOBAL ([\w.]+)", text)
    if not forbidden and "Unsupported operand" in text:  # the weights-only unpickler meets an opcode torch never writes
        return CheckpointError(f"{path}: not a PyTorch checkpoint (a pickle that torch.save did not write)")
    if forbidden or "Weights only load failed" in text or "weights_only" in text:
        what = f" ({forbidden.group(1)})" if forbidden else ""
        return CheckpointError(
            f"{path}: refused to load: the file holds a Python object{what} other than tensors (unpickling it "
            "could run code)"
        )
    if isinstance(e, pickle.UnpicklingError) and text.startswith("refusing to load"):  # the numpy-only unpickler
        return CheckpointError(f"{path}: refused to unpickle ({first})")
    zipped = isinstance(e, (EOFError, zipfile.BadZipFile)) or any(
        part in first.lower() for part in ("zip", "central directory", "failed finding", "failed reading")
    )
    if zipped:
        return CheckpointError(f"{path}: truncated or corrupt ({first.split('. ')[0][:160]})")
    return CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first[:120]})")


def read_checkpoint(path: str | Path) -> dict:
    """The raw object stored in a weights file (a dict), read without executing anything from the file.

    Every failure is one `CheckpointError` line naming the file: missing, empty, text (or an HTML page, a Git LFS
    pointer) instead of weights, truncated or corrupt, or holding Python objects besides tensors (refused, never run).
    """
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
            problem = _not_a_torch_file(path)
            if problem:
                raise CheckpointError(f"{path}: {problem}")
            with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise CheckpointError(f"{path}: too large to load in memory") from None
    except _READ_ERRORS as e:  # torch.load and the unpicklers raise all of these for a bad file: one line each
        raise _read_error(path, e) from None
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


def _known_variant(sd) -> str | None:
    """The variant (published or the demo) whose architecture a full FastInst state dict has, from its keys and the
    widths of its backbone stem and decoder (class count aside), or None."""
    from .config import VARIANTS, get_config

    keys = set(sd)
    stem = sd.get("backbone.stem.conv1.weight")
    hidden = sd.get("sem_seg_head.predictor.class_embed_layers.0.layers.0.weight")
    if stem is None or hidden is None or not hasattr(stem, "shape") or not hasattr(hidden, "shape"):
        return None
    vd, depth, layers = _architecture(keys)
    for name in VARIANTS:
        c = get_config(name).model
        same = (c.backbone == "resnet_vd") == vd and c.depth == depth and c.dec_layers == layers
        if same and c.hidden_dim == hidden.shape[-1] and c.backbone_width == stem.shape[0]:
            return name
    return None


def guess_variant(keys) -> str:
    """Describe which FastInst variant a set of state-dict keys (or a state dict: then the demo is told apart by its
    widths) belongs to (for error messages)."""
    full = isinstance(keys, dict) and any(k.startswith("sem_seg_head.") for k in keys)
    known = _known_variant(keys) if full else None
    keys = set(keys)
    if not any(k.startswith("sem_seg_head.") for k in keys):
        if any(k.startswith(("layer1.", "conv1.", "res2.", "stem.", "backbone.")) for k in keys):
            return "a backbone-only file (use --backbone-weights / load_backbone)"
        return "not a FastInst checkpoint"
    vd, depth, layers = _architecture(keys)
    name = f"FastInst-D{layers} {f'R{depth}-vd-DCN' if vd else f'R{depth}'}"
    official = published_variant(keys)
    return f"{name} ({known or official})" if known or official else name


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
    misshaped = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in misshaped]
    classes_only = not missing and not unexpected and all(_class_sized(k, sd[k], own[k]) for k in misshaped)
    if strict and misshaped and classes_only:  # the same network for another class count: say just that
        name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
        theirs, ours = checkpoint_classes(sd), checkpoint_classes(own)
        raise CheckpointError(f"{label}: this checkpoint has {theirs} classes, the model ({name}) {ours}")
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


def architecture_changes(stored, cfg) -> list[str]:
    """`model.<key> <checkpoint's> -> <cfg's>` for every model setting (class names and ids aside) in which the
    config stored in a training checkpoint (`stored`, a `to_dict` dict; anything else: no changes known) and the
    `Config` `cfg` differ: what a resumed run cannot change."""
    from .config import to_dict

    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        return []

    def plain(value):
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    now = to_dict(cfg)["model"]
    return [
        f"model.{key} {plain(old)} -> {plain(now[key])}"
        for key, old in stored["model"].items()
        if key in now and key not in ("class_names", "category_ids") and plain(old) != plain(now[key])
    ]


_CLASS_SIZED = ("class_embed_layers", "proposal_cls_logits", "empty_weight")
CLASS_BIAS = "sem_seg_head.predictor.class_embed_layers.0.layers.2.bias"
"""The bias of the first class head: num_classes + 1 rows (the last one is "no object")."""


def _class_sized(key: str, theirs: torch.Tensor, ours: torch.Tensor) -> bool:
    """Whether a shape difference is only the class count (class heads, proposal classifier, `empty_weight`)."""
    return any(part in key for part in _CLASS_SIZED) and theirs.shape[1:] == ours.shape[1:]


def checkpoint_classes(sd) -> int | None:
    """The class count of a full FastInst state dict (its class head's rows less "no object"), or None."""
    bias = sd.get(CLASS_BIAS)
    return int(bias.shape[0]) - 1 if isinstance(bias, torch.Tensor) and bias.ndim == 1 else None


def checkpoint_class_names(raw: dict) -> list[str] | None:
    """The class names a checkpoint was trained with, from its config (`fastinst train` stores them), else None (an
    official release has none: its 80 classes are COCO's, `fastinst.data.coco_classes`)."""
    cfg = raw.get("config")
    names = cfg.get("model", {}).get("class_names") if isinstance(cfg, dict) else None
    if isinstance(names, (list, tuple)) and names:
        return [str(n) for n in names]
    return None


def _rows_by_name(model: nn.Module, names: list[str] | None) -> list[int | None] | None:
    """For each of `model`'s classes the checkpoint's class of the same name (its row), or None; None when a side
    has no names or no name is shared (`fastinst.classes`)."""
    from .classes import has_names, match_classes
    from .errors import DatasetError

    own = [str(n) for n in getattr(model, "names", None) or []]
    if not names or not has_names(names) or not has_names(own):
        return None
    try:
        match = match_classes(own, list(range(len(own))), names, list(range(len(names))))
    except DatasetError:
        return None
    return match.ids


def transfer_checkpoint(
    model: nn.Module, sd: dict[str, torch.Tensor], path: str | Path, names: list[str] | None = None
) -> str:
    """Initialise `model` for fine-tuning from the state dict `sd` of a FastInst checkpoint of the same variant (read
    from `path`, named in messages; `names`: its class names, `checkpoint_class_names`); -> the line to print.

    Every tensor is copied. The class-sized ones (class heads, proposal classifier, `empty_weight`: one row per class
    plus "no object") are copied row by row by class name when both sides name their classes (the classes of the
    same name keep what they learnt, whatever their order; new classes keep their fresh rows; `fastinst.classes`
    compares names); without names they are copied as they are when the class counts agree, else left freshly
    initialised. The line says which. A checkpoint of another variant is refused with the same one-line message as
    `load_checkpoint` (eval, predict)."""
    own = model.state_dict()
    old_k, new_k = checkpoint_classes(sd), int(getattr(model, "num_classes", -1))
    heads = [
        k
        for k in own
        if k in sd
        and any(part in k for part in _CLASS_SIZED)
        and old_k is not None
        and sd[k].shape[:1] == (old_k + 1,)
        and own[k].shape[:1] == (new_k + 1,)
        and sd[k].shape[1:] == own[k].shape[1:]
    ]
    rows = _rows_by_name(model, names)
    if rows is None and old_k == new_k:
        heads = []  # no names to go by and the same count: the rows as they are
    merged = dict(sd)
    for k in heads:
        fresh = own[k].clone()
        for i, j in enumerate(rows or []):
            if j is not None:
                fresh[i] = sd[k][j]
        if rows is not None:
            fresh[-1] = sd[k][-1]  # "no object"
        merged[k] = fresh
    load_checkpoint(model, merged, strict=True, label=str(path))
    kept = [str(n) for n, j in zip(getattr(model, "names", None) or [], rows or [], strict=False) if j is not None]
    if heads and len(kept) == new_k == old_k:  # every class found by name: everything transferred
        order = "" if rows == list(range(new_k)) else "; class-head rows reordered by class name"
        return f"transferred {len(own)}/{len(own)} tensors from {path}{order}"
    line = f"transferred {len(own) - len(heads)}/{len(own)} tensors from {path}"
    if not heads:
        return line
    if kept:
        shown = ", ".join(kept[:8]) + (", ..." if len(kept) > 8 else "")
        return line + (
            f"; class heads ({len(heads)} tensors) by class name: {len(kept)} of {new_k} classes kept ({shown}), "
            f"{new_k - len(kept)} re-initialised"
        )
    return line + f"; re-initialised for {new_k} classes: {len(heads)} class-head tensors ({', '.join(heads[:3])}, ...)"
