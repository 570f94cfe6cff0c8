"""The config schema: the dataclass tree of a FastInst config and the rules its values follow.

`Config` holds a `ModelConfig`, `LossConfig`, `InputConfig` and `SolverConfig`. `coerce(value, field_type(cls, name),
key)` turns a parsed YAML value into a field's declared type, and `validate(cfg)` checks every numeric setting against
its range and every enumerated one against its choices; both raise `ConfigError` naming the key and what it accepts.
Where a config comes from (the variants, YAML files, `key=value` overrides, a checkpoint's dict) is `fastinst.config`,
which re-exports these names: import them from there.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field

import yaml

from .errors import FastInstError, shown


class ConfigError(FastInstError, ValueError):
    """A config name, file or override that cannot be used; the message says which and why."""


@dataclass
class ModelConfig:
    backbone: str = "resnet"  # "resnet" (detectron2 layout) or "resnet_vd" (timm layout, deep stem, DCN)
    depth: int = 50  # 18, 34, 50 or 101
    deform_stages: tuple[bool, bool, bool, bool] = (False, False, False, False)  # DCN per res2..res5 (vd only)
    backbone_norm: str = "FrozenBN"  # FrozenBN (official) or BN (trainable; the from-scratch demo)
    backbone_width: int = 64  # channels of the stem / first stage ("resnet" only; 64 = standard)
    num_classes: int = 80
    # the dataset's class names and category ids, in contiguous class order; () = COCO's for 80 classes, else
    # class0.. / 1..N. `fastinst train` fills them, so a checkpoint names its own classes.
    class_names: tuple[str, ...] = ()
    category_ids: tuple[int, ...] = ()
    hidden_dim: int = 256
    num_queries: int = 100  # IA-guided queries (N_a)
    num_aux_queries: int = 8  # learnable auxiliary queries (N_b)
    nheads: int = 8
    dim_feedforward: int = 1024
    dec_layers: int = 1
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = (123.675, 116.280, 103.530)
    pixel_std: tuple[float, float, float] = (58.395, 57.120, 57.375)


@dataclass
class LossConfig:
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    location_weight: float = 1000.0
    proposal_weight: float = 20.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True


@dataclass
class InputConfig:
    min_size_train: tuple[int, ...] = (416, 448, 480, 512, 544, 576, 608, 640)
    max_size_train: int = 853
    crop_enabled: bool = True
    crop_resize_sizes: tuple[int, ...] = (400, 500, 600)
    crop_size: tuple[int, int] = (384, 600)
    random_flip: bool = True
    min_size_test: int = 640
    max_size_test: int = 853
    # drop training images without an instance (detectron2's FILTER_EMPTY_ANNOTATIONS); by default they are kept as
    # negatives (background images teach the model what is not an object, as Ultralytics users expect)
    filter_empty: bool = False


@dataclass
class SolverConfig:
    optimizer: str = "adamw"  # "adamw" (paper) or "sgd" (momentum 0.9)
    base_lr: float = 1e-4
    weight_decay: float = 0.05
    backbone_multiplier: float = 0.1
    ims_per_batch: int = 16  # global batch (split over processes)
    max_iter: int = 368750  # ~50 COCO epochs at batch 16
    # > 0: train this many passes over the training images instead (sets max_iter; see schedule). Giving it with a
    # max_iter that changes the run length is refused (`apply_overrides`): one of the two would be ignored
    epochs: float = 0.0
    steps: tuple[int, ...] = (327778, 355092)
    gamma: float = 0.1
    warmup_iters: int = 0
    amp: bool = True  # fp16 + GradScaler on CUDA
    # bf16 autocast on a CPU, the model in channels_last: D1-R50 1.59x the fp32 step on AVX512-BF16 (benchmarks/
    # README.md "Training"); off by default: it changes the numbers of the paper's recipe, and CPUs without bf16
    # hardware emulate it slowly
    amp_cpu_bf16: bool = False
    clip_grad_norm: float = 0.0  # 0 = off (paper)
    ema_decay: float = 0.0  # 0 = off (paper)
    checkpoint_period: int = 5000
    eval_period: int = 5000
    log_period: int = 20
    seed: int = 42
    num_workers: int = 4
    max_nonfinite_steps: int = 5  # consecutive NaN/Inf losses tolerated before the run stops


@dataclass
class Config:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    weights_url: str = ""  # official release file, if any
    coco_ap: float | None = None  # the paper's COCO val2017 mask AP


def yaml_scalar(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=1 << 30).strip().removesuffix("...").strip()


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def field_type(cls, name: str):
    return typing.get_type_hints(cls)[name]


def coerce(value, tp, key: str):
    """Convert a parsed YAML value to the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        elem = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, elem, key) for v in values)
        if len(values) != len(args):
            raise ConfigError(f"{key} needs {len(args)} values, got {len(values)}")
        return tuple(coerce(v, a, key) for v, a in zip(values, args, strict=True))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return coerce(value, members[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and (not math.isfinite(value) or int(value) != value))
        ):
            raise ConfigError(f"{key} must be an integer, got {shown(value)}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise ConfigError(f"{key} must be a finite number, got {shown(value)}")
        return float(value)
    if tp is str:
        if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {shown(value)}")
    return value


# Ranges of the numeric settings: (lowest, highest, whether the lowest itself is allowed). Checked after every change
# (`apply_overrides`, YAML files), so `solver.ims_per_batch=0` is refused instead of silently training with 1.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "model.depth": (18, 152, True),
    "model.backbone_width": (1, 1 << 16, True),
    "model.num_classes": (1, 1 << 20, True),
    "model.hidden_dim": (1, 1 << 16, True),
    "model.num_queries": (1, 1 << 16, True),
    "model.num_aux_queries": (0, 1 << 16, True),
    "model.nheads": (1, 1024, True),
    "model.dim_feedforward": (1, 1 << 20, True),
    "model.dec_layers": (1, 64, True),
    "model.size_divisibility": (1, 1024, True),
    "loss.class_weight": (0, float("inf"), True),
    "loss.mask_weight": (0, float("inf"), True),
    "loss.dice_weight": (0, float("inf"), True),
    "loss.location_weight": (0, float("inf"), True),
    "loss.proposal_weight": (0, float("inf"), True),
    "loss.no_object_weight": (0, float("inf"), True),
    "loss.num_points": (1, 1 << 24, True),
    "loss.oversample_ratio": (1, 1000, True),
    "loss.importance_sample_ratio": (0, 1, True),
    "input.min_size_train": (1, 1 << 15, True),
    "input.max_size_train": (1, 1 << 15, True),
    "input.crop_resize_sizes": (1, 1 << 15, True),
    "input.crop_size": (0, 1 << 15, False),
    "input.min_size_test": (1, 1 << 15, True),
    "input.max_size_test": (1, 1 << 15, True),
    "solver.base_lr": (0, 10, False),
    "solver.weight_decay": (0, 10, True),
    "solver.backbone_multiplier": (0, 100, True),
    "solver.ims_per_batch": (1, 1 << 16, True),
    "solver.max_iter": (1, 1 << 40, True),
    "solver.epochs": (0, 1 << 20, True),
    "solver.steps": (1, 1 << 40, True),
    "solver.gamma": (0, 1, False),
    "solver.warmup_iters": (0, 1 << 40, True),
    "solver.clip_grad_norm": (0, float("inf"), True),
    "solver.ema_decay": (0, 1, True),
    "solver.checkpoint_period": (0, 1 << 40, True),  # 0 = only at the end
    "solver.eval_period": (0, 1 << 40, True),  # 0 = only at the end
    "solver.log_period": (1, 1 << 40, True),
    "solver.num_workers": (0, 1024, True),
    "solver.max_nonfinite_steps": (0, 1 << 20, True),
}


# The settings that take one of a few values (what the backbone, its norm layers and the trainer implement).
_CHOICES: dict[str, tuple] = {
    "model.backbone": ("resnet", "resnet_vd"),
    "model.depth": (18, 34, 50, 101),
    "model.backbone_norm": ("FrozenBN", "BN", "GN"),
    "solver.optimizer": ("adamw", "sgd"),
}


def validate(cfg: Config) -> Config:
    """`cfg`, or `ConfigError` naming the first setting outside its range (`_RANGES`) or its choices (`_CHOICES`)."""
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"{key}={shown(value)}: must be one of {', '.join(map(str, choices))}")
    for key, (low, high, low_ok) in _RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        for v in value if isinstance(value, tuple) else (value,):
            if not (low <= v <= high) or (v == low and not low_ok):
                bound = f"at least {low:g}" if low_ok else f"above {low:g}"
                top = f" and at most {high:g}" if high < 1e6 else ""
                text = yaml_scalar(list(value) if isinstance(value, tuple) else value)
                text = text if len(text) <= 60 else text[:57] + "..."
                raise ConfigError(f"{key}={text}: must be {bound}{top}")
    if list(cfg.solver.steps) != sorted(cfg.solver.steps):
        raise ConfigError(f"solver.steps={list(cfg.solver.steps)}: must be in increasing order")
    return cfg
