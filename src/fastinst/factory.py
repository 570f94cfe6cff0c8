"""One way to get a model: `load_model(name | yaml | checkpoint, weights=None | path | "official", device="auto")`.

Every command and API call builds its model here. The rule when a name and a checkpoint disagree, everywhere:

* a checkpoint written by `fastinst train` carries its config (architecture, class count, class names, category ids):
  **the checkpoint wins**, and when a different `--model` was named, one line on stderr says so;
* any other file (the official releases, plain state dicts) has no config: the named variant gives the architecture
  and the classifier's size gives the class count; a file that does not fit is refused with what it looks like.

The returned model is in eval mode on the chosen device, with `names` (class names, contiguous order) and
`category_ids` (the dataset's ids) attached.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import load_checkpoint, published_variant, read_checkpoint, to_state_dict
from .config import DEVICE_CHOICES, DEVICE_PATTERN, Config, from_dict, get_config, to_dict
from .errors import CheckpointError, FastInstError, note
from .files import same_file
from .model.fastinst import FastInst

if TYPE_CHECKING:
    from .runtimes import OpenVinoModel

__all__ = ["build_model", "load_backend", "load_model", "openvino_from_torch", "parse_classes", "resolve_device"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pkl", ".npz", ".ckpt")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None): CUDA if available, then MPS, then CPU; otherwise the named device, which must exist here."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if not DEVICE_PATTERN.fullmatch(name):
        raise FastInstError(f"device {device!r}: use {DEVICE_CHOICES}")
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FastInstError(f"device {device!r}: CUDA is not available on this machine; use {_usable(mps_ok)}")
        index = int(name.split(":")[1]) if ":" in name else 0
        count = torch.cuda.device_count()
        if index >= count:
            usable = _usable(mps_ok, count)
            raise FastInstError(f"device {device!r}: this machine has {count} CUDA device(s); use {usable}")
    if name == "mps" and not mps_ok:
        raise FastInstError(f"device {device!r}: MPS is not available on this machine; use {_usable(mps_ok)}")
    return torch.device(name)


def _usable(mps: bool, cuda: int = 0) -> str:
    """The device names that work on this machine, for messages."""
    names = ["auto", "cpu"] + (["cuda", f"cuda:N (N < {cuda})"] if cuda else []) + (["mps"] if mps else [])
    return ", ".join(names[:-1]) + " or " + names[-1]


def build_model(name_or_cfg: str | Path | Config, overrides: list[str] | None = None) -> FastInst:
    """A randomly initialised FastInst for a variant name/alias, a YAML file or a `Config` (+ key=value overrides)."""
    from .config import apply_overrides

    cfg = name_or_cfg if isinstance(name_or_cfg, Config) else get_config(str(name_or_cfg))
    return FastInst(apply_overrides(cfg, overrides) if overrides else cfg)


def parse_classes(spec: str | Path | Iterable[str] | None) -> tuple[list[str] | None, list[int] | None]:
    """Class names (and dataset category ids when known) from a list, a text file (one name a line), a COCO json
    (its `categories`, by id), a YOLO data.yaml (`names:` list or mapping) or a comma-separated string."""
    if spec is None:
        return None, None
    if not isinstance(spec, (str, Path)):
        return [str(n) for n in spec], None
    path = Path(spec)
    names: list[str]
    if path.is_file():
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                import json

                cats = sorted(json.loads(path.read_text())["categories"], key=lambda c: c["id"])
                return [str(c["name"]) for c in cats], [int(c["id"]) for c in cats]
            if suffix in (".yaml", ".yml"):
                import yaml

                raw = (yaml.safe_load(path.read_text()) or {}).get("names")
                items = [raw[k] for k in sorted(raw)] if isinstance(raw, dict) else raw
                if not isinstance(items, list):
                    raise ValueError("no `names:` list or mapping")
                names = [str(n) for n in items]
            else:
                names = [ln.strip() for ln in path.read_text().splitlines()]
                names = [n for n in names if n and not n.startswith("#")]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise FastInstError(f"{path}: cannot read class names ({type(e).__name__}: {e})") from None
    elif str(spec).endswith((".txt", ".json", ".yaml", ".yml")):
        raise FastInstError(f"{spec}: no such classes file")
    else:
        names = [n.strip() for n in str(spec).split(",") if n.strip()]
    if not names:
        raise FastInstError(f"{spec}: no class names found")
    return names, None


def _is_checkpoint(model: str | Path | None) -> bool:
    return model is not None and str(model).lower().endswith(CHECKPOINT_SUFFIXES) and Path(model).is_file()


def load_model(
    model: str | Path | Config | None = None,
    weights: str | Path | None = None,
    device: str | torch.device | None = "auto",
    classes: str | Path | Iterable[str] | None = None,
) -> FastInst:
    """A FastInst model ready for inference. See the module docstring for how `model` and `weights` combine.

    model: a variant name or alias (`fastinst-d1-r50`), a YAML config, a `Config`, or a checkpoint file (then
    `weights` may be omitted). weights: a checkpoint file, `"official"` (the variant's release, downloaded and cached),
    or None (random initialisation, with a warning). classes: names to show (list, text file, COCO json, YOLO
    data.yaml or comma list): see `assign_classes`.
    """
    if not isinstance(model, Config) and _is_checkpoint(model):
        if weights is not None and str(weights) != "official" and not same_file(str(model), weights):
            raise FastInstError(
                f"--model {model} and --weights {weights} are two checkpoints; give one (its config is inside) or "
                "name the variant with --model"
            )
        model, weights = None, model
    named = model.name if isinstance(model, Config) else (str(model) if model is not None else None)
    cfg = model if isinstance(model, Config) else (get_config(str(model)) if model is not None else None)
    raw = None
    if str(weights) == "official":
        if cfg is None:
            raise FastInstError("--weights official needs --model NAME (which release to download)")
        from .hub import official_weights

        weights = official_weights(cfg.name)
    if weights is not None:
        raw = read_checkpoint(weights)
        if isinstance(raw.get("config"), dict):
            stored = from_dict(raw["config"])
            if cfg is not None and not _same_arch(stored, cfg):
                note(
                    f"{weights} is a {stored.name} checkpoint with {stored.model.num_classes} classes; "
                    f"it is used instead of --model {named}"
                )
            cfg = stored
        else:
            sd = to_state_dict(raw)
            if cfg is None:
                guessed = published_variant(sd)
                if guessed is None:
                    raise CheckpointError(f"{weights}: has no config and matches no published variant; name --model")
                cfg = get_config(guessed)
            bias = sd.get("sem_seg_head.predictor.class_embed_layers.0.layers.2.bias")
            if bias is not None and bias.ndim == 1:  # num_classes + 1 rows ("no object")
                cfg.model.num_classes = int(bias.shape[0]) - 1
    elif cfg is None:
        raise FastInstError("name a model (--model NAME) or a checkpoint file")
    names, ids = parse_classes(classes)
    if names is not None and raw is None:
        cfg.model.num_classes = len(names)
    net = build_model(cfg)
    if raw is None:
        warnings.warn(f"{cfg.name}: no weights given, the model is randomly initialised", stacklevel=2)
    else:
        _load(net, raw, weights)
    if names is not None:
        assign_classes(net, names, ids, str(classes), str(weights or cfg.name))
    return net.to(resolve_device(device)).eval()


def assign_classes(model, names: list[str], ids: list[int] | None, spec: str, label: str) -> None:
    """Give `model` (a FastInst or an exported model: `names`, `category_ids`) the classes of `--classes SPEC`.

    A model that names its classes (a checkpoint from `fastinst train`, an official one: COCO's) keeps them, and a
    spec with category ids (a COCO json such as the training set's own annotation file, unused categories and all)
    gives each class the id of the category of the same name (`fastinst.classes`; classes it lacks get None
    and are left out of COCO results; a note says so). Otherwise the names rename the model's classes in order (a
    model without names, or a list that matches none of its names), so their count must be the model's."""
    from .classes import has_names, match_classes

    own_names, own_ids = list(model.names), list(model.category_ids)
    n = len(own_names)
    if has_names(own_names, own_ids) and has_names(names, ids):
        spec_ids = list(ids) if ids else None
        try:
            match = match_classes(own_names, own_ids, names, spec_ids or list(range(1, len(names) + 1)), spec)
        except FastInstError:
            match = None  # no name in common: a renaming, below
        if match is not None:
            for line in match.notes(spec, model_label=label):
                note(line)
            if spec_ids:
                model.category_ids = match.ids
            return
    if len(names) != n:
        raise FastInstError(
            f"{len(names)} class names given, but {label} has {n} classes"
            + (f" ({', '.join(own_names[:5])}, ...) and none of them is among the names given" if own_names else "")
        )
    model.names = list(names)
    model.category_ids = list(ids) if ids else list(range(1, n + 1))
    cfg = getattr(model, "cfg", None)
    if cfg is not None:  # what an export or a checkpoint of this model then records
        cfg.model.class_names, cfg.model.category_ids = tuple(model.names), tuple(model.category_ids)


def _same_arch(a: Config, b: Config) -> bool:
    """Same network apart from the classes (a checkpoint fine-tuned from the named variant)."""
    from dataclasses import replace

    def strip(c: Config):
        return replace(c.model, num_classes=0, class_names=(), category_ids=())

    return strip(a) == strip(b)


def _load(model: FastInst, raw: dict, label) -> None:
    """Load a checkpoint dict; the error names the file and, for a class-count mismatch, says so plainly."""
    try:
        load_checkpoint(model, raw)
    except CheckpointError as e:
        bias = to_state_dict(raw).get("sem_seg_head.predictor.class_embed_layers.0.layers.2.bias")
        if bias is not None and bias.ndim == 1 and int(bias.shape[0]) - 1 != model.num_classes:
            raise CheckpointError(
                f"{label}: this checkpoint has {int(bias.shape[0]) - 1} classes, the model {model.num_classes}"
            ) from None
        raise CheckpointError(f"{label}: {str(e).removeprefix('state dict: ')}") from None


def load_backend(
    backend: str = "torch",
    model: str | Path | Config | None = None,
    weights: str | Path | None = None,
    device: str | torch.device | None = "auto",
    classes: str | Path | Iterable[str] | None = None,
    dtype: str = "auto",
    exported: str | Path | None = None,
):
    """A model with `FastInst`'s inference contract (`detect`, `names`, `category_ids`, `cfg`) on `backend`:

    * "torch": `load_model(model, weights, device, classes)` (the Predictor then picks the precision);
    * "onnxruntime": the ONNX file `exported` (from `fastinst export`), run in fp32 as exported;
    * "openvino": the IR (.xml) or ONNX file `exported`, or else `model`/`weights` exported once into the fastinst
      cache (`openvino_from_torch`), compiled for the CPU in `dtype`.

    An `exported` file with backend "torch" picks its runtime by suffix (.onnx -> onnxruntime, .xml -> openvino).
    `classes` follow `assign_classes` on every backend."""
    from .runtimes import BACKENDS

    if backend not in BACKENDS:
        raise FastInstError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if exported is not None and backend == "torch":
        backend = "openvino" if str(exported).lower().endswith(".xml") else "onnxruntime"
    if backend == "torch":
        return load_model(model, weights, device, classes)
    if backend == "onnxruntime":
        if exported is None:
            raise FastInstError("--backend onnxruntime needs --onnx FILE (made by `fastinst export`)")
        try:
            from .runtimes import OnnxModel

            net: Any = OnnxModel(exported)
        except ImportError as e:
            raise FastInstError(f"the onnxruntime backend is unavailable ({e}); pip install 'fastinst[onnx]'") from None
    else:
        if resolve_device(device).type != "cpu" and str(device or "auto") != "auto":
            raise FastInstError(f"--backend openvino runs on the CPU; use --device cpu (or auto), not {device}")
        from .runtimes import OpenVinoModel

        if exported is not None:
            net = OpenVinoModel(exported, dtype=dtype)
        else:
            if weights is None and (isinstance(model, Config) or not _is_checkpoint(model)):
                raise FastInstError("--backend openvino needs --weights PATH (or --onnx FILE, an exported model)")
            with torch.no_grad():
                net = openvino_from_torch(load_model(model, weights, "cpu"), dtype=dtype)
    if classes is not None:
        names, ids = parse_classes(classes)
        if names is not None:
            assign_classes(net, names, ids, str(classes), str(exported or weights or model))
    return net


def openvino_from_torch(model: FastInst, dtype: str = "auto", threads: int | None = None) -> OpenVinoModel:
    """A PyTorch FastInst as an `OpenVinoModel` (`fastinst.runtimes`): exported once as a dynamic-size ONNX file
    into the fastinst cache folder (`openvino/<weights_key(model)>.onnx`, reused afterwards), then compiled per input
    size. `--backend openvino --weights W` and `fastinst.load(..., backend="openvino")` need no manual export."""
    from .export import export_onnx
    from .files import cache_dir
    from .runtimes import OpenVinoModel

    path = cache_dir() / "openvino" / f"{weights_key(model)}.onnx"
    if not path.is_file():
        try:
            export_onnx(model, path, dynamic=True)
        except OSError as e:
            raise FastInstError(f"{path.parent}: cannot write the exported model there ({e.strerror})") from None
    return OpenVinoModel(path, dtype=dtype, threads=threads)


def weights_key(model: FastInst) -> str:
    """A short hash of a model's config and weights: the name of its cached export."""
    digest = hashlib.sha256(json.dumps(to_dict(model.cfg), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]
