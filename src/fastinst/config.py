"""Typed configuration: one dataclass tree per model variant, the five published ones plus a CPU demo.

`get_config(name)` returns a fresh `Config` for an official config name (`fastinst_R50_ppm-fpn_x1_576`) or an alias
(`fastinst-d1-r50`). `apply_overrides(cfg, ["solver.base_lr=2e-4", ...])` edits it with `key=value` strings and
raises `ConfigError` naming the key and what it accepts. Values follow SPEC §1 (the official YAML files resolved).
The dataclasses and the rules their values follow (types, ranges: `validate`) are `fastinst.config_schema`; they are
imported from here.

Every variant is also written out as YAML (every resolved value, for reading and copying into your own config) in
`CONFIG_DIR`, the `configs/` folder inside the installed package; `config_file(name)` is one variant's file.
`tools/write_configs.py` regenerates them from this module.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Collection
from pathlib import Path

import yaml

from .config_schema import (
    Config,
    ConfigError,
    InputConfig,
    LossConfig,
    ModelConfig,
    SolverConfig,
    coerce,
    field_type,
    shown,
    validate,
    yaml_scalar,
)

# What a device name may be (`--device`, `load_model(device=...)`); `fastinst.factory.resolve_device` turns "auto"
# into CUDA, then MPS, then CPU. Here, torch-free, so that the CLI parsers can check it without importing torch.
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(?::\d+)?")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


_RELEASE = "https://github.com/junjiehe96/FastInst/releases/download/v0.1.0/"


def _variant(
    name: str, backbone: str, depth: int, dec_layers: int, test: tuple[int, int], ap: float, ckpt: str
) -> Config:
    dcn = (False, False, True, True) if backbone == "resnet_vd" else (False, False, False, False)
    return Config(
        name=name,
        model=ModelConfig(backbone=backbone, depth=depth, deform_stages=dcn, dec_layers=dec_layers),
        input=InputConfig(min_size_test=test[0], max_size_test=test[1]),
        weights_url=_RELEASE + ckpt,
        coco_ap=ap,
    )


def _demo() -> Config:
    """A small CPU-trainable variant: half-width ResNet-18 (BN, from scratch), D1, 64-d decoder, ~160-px inputs.

    Made for the demo's synthetic shapes (160-px images, see `fastinst.data.synthetic`): a half-width backbone, a
    narrow decoder and a short side of 128-192 keep a training step of 8 images near 0.25 s on two cores, which buys
    ~2,000 iterations in the demo's budget; for a from-scratch model the number of iterations matters more than width
    or resolution. 1,024 points suffice for mask losses on a 20x20 stride-8 grid. Testing at 224 px (1.4x the data,
    above the training sizes, as the official recipe tests at the top of its range) gives the small shapes a finer
    mask grid: 59.6 vs 47.3 AP at 160 px for the same weights. lr 1e-3 with a 50-iteration warm-up (from scratch, BN).
    Everything else is FastInst unchanged.
    """
    return Config(
        name="fastinst-demo",
        model=ModelConfig(
            backbone="resnet",
            depth=18,
            backbone_norm="BN",
            backbone_width=32,
            num_classes=4,
            hidden_dim=64,
            num_queries=16,
            num_aux_queries=4,
            nheads=4,
            dim_feedforward=128,
            dec_layers=1,
        ),
        loss=LossConfig(num_points=1024),
        input=InputConfig(
            min_size_train=(128, 160, 192), max_size_train=256, crop_enabled=False, min_size_test=224, max_size_test=320
        ),
        solver=SolverConfig(
            base_lr=1e-3,
            weight_decay=0.05,
            backbone_multiplier=1.0,
            ims_per_batch=8,
            max_iter=3000,
            steps=(2400,),
            warmup_iters=50,
            amp=False,
            checkpoint_period=500,
            eval_period=0,
            log_period=10,
            num_workers=0,
        ),
    )


VARIANTS: dict[str, typing.Callable[[], Config]] = {
    "fastinst_R50_ppm-fpn_x1_576": lambda: _variant(
        "fastinst_R50_ppm-fpn_x1_576", "resnet", 50, 1, (576, 777), 34.9, "fastinst_R50_ppm-fpn_x1_576_34.9.pth"
    ),
    "fastinst_R50_ppm-fpn_x3_640": lambda: _variant(
        "fastinst_R50_ppm-fpn_x3_640", "resnet", 50, 3, (640, 853), 37.9, "fastinst_R50_ppm-fpn_x3_640_37.9.pth"
    ),
    "fastinst_R101_ppm-fpn_x3_640": lambda: _variant(
        "fastinst_R101_ppm-fpn_x3_640", "resnet", 101, 3, (640, 853), 38.9, "fastinst_R101_ppm-fpn_x3_640_38.9.pth"
    ),
    "fastinst_R50-vd-dcn_ppm-fpn_x1_576": lambda: _variant(
        "fastinst_R50-vd-dcn_ppm-fpn_x1_576",
        "resnet_vd",
        50,
        1,
        (576, 777),
        37.4,
        "fastinst_R50-vd-dcn_ppm-fpn_x1_576_37.4.pth",
    ),
    "fastinst_R50-vd-dcn_ppm-fpn_x3_640": lambda: _variant(
        "fastinst_R50-vd-dcn_ppm-fpn_x3_640",
        "resnet_vd",
        50,
        3,
        (640, 853),
        40.1,
        "fastinst_R50-vd-dcn_ppm-fpn_x3_640_40.1.pth",
    ),
    "fastinst-demo": _demo,
}

ALIASES: dict[str, str] = {
    "fastinst-d1-r50": "fastinst_R50_ppm-fpn_x1_576",
    "fastinst-d3-r50": "fastinst_R50_ppm-fpn_x3_640",
    "fastinst-d3-r101": "fastinst_R101_ppm-fpn_x3_640",
    "fastinst-d1-r50vd-dcn": "fastinst_R50-vd-dcn_ppm-fpn_x1_576",
    "fastinst-d3-r50vd-dcn": "fastinst_R50-vd-dcn_ppm-fpn_x3_640",
}

PUBLISHED = [n for n in VARIANTS if n != "fastinst-demo"]

# package data (pyproject.toml [tool.setuptools.package-data]), so it is there in a wheel install too
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def canonical_name(name: str) -> str:
    """Official config name for a variant name, alias, or `<name>.yaml` / release file name."""
    key = Path(name).name
    for suffix in (".yaml", ".yml"):
        key = key.removesuffix(suffix)
    if key in ALIASES:
        return ALIASES[key]
    if key in VARIANTS:
        return key
    for official in PUBLISHED:  # release file names carry the AP: fastinst_R50_ppm-fpn_x1_576_34.9.pth
        if key.startswith(official + "_"):
            return official
    choices = sorted(VARIANTS) + sorted(ALIASES)
    close = difflib.get_close_matches(key, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown model {name!r}{hint}; choose one of: {', '.join(choices)}")


def config_file(name: str) -> Path:
    """The shipped YAML file of a variant name or alias: `CONFIG_DIR / "<official name>.yaml"`."""
    path = CONFIG_DIR / f"{canonical_name(name)}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: shipped config missing (a broken install? reinstall fastinst)")
    return path


def get_config(name: str) -> Config:
    """A fresh config for a variant name or alias, or a YAML file (with optional `base:` variant) on disk.

    A `.yaml` name that is not a file is looked up by its file name among the variants, so a path to a shipped config
    from another layout (`configs/fastinst_R50_ppm-fpn_x1_576.yaml`) still names that variant."""
    if name.endswith((".yaml", ".yml")):
        if Path(name).is_file():
            return load_yaml(name)
        try:
            canonical_name(name)
        except ConfigError:
            raise ConfigError(f"{name}: no such YAML config file") from None
    return VARIANTS[canonical_name(name)]()


def read_yaml_mapping(path: Path) -> dict:
    """A YAML config file's top-level mapping (an empty file is {}); anything else is one `ConfigError` line."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as e:  # ValueError: a 5,000-digit number
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{path}: cannot read YAML config ({first})") from None
    except RecursionError:
        raise ConfigError(f"{path}: cannot read YAML config (nested more deeply than the parser can follow)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping, got {type(data).__name__}")
    return data


def load_yaml(path: str | Path) -> Config:
    """A YAML config: `base: <variant>` plus nested sections (model, loss, input, solver) that override it."""
    path = Path(path)
    data = read_yaml_mapping(path)
    base = data.pop("base", "fastinst-demo")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a variant name (a string), got {shown(base)}")
    cfg = get_config(base)
    overrides = []
    for section, values in data.items():
        if isinstance(values, dict):
            overrides += [f"{section}.{k}={yaml_scalar(v)}" for k, v in values.items()]
        else:
            overrides.append(f"{section}={yaml_scalar(values)}")
    try:
        return apply_overrides(cfg, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    """Inverse of `to_dict` (used when a checkpoint carries its config)."""
    cfg = Config()
    for f in dataclasses.fields(Config):
        if f.name not in data:
            continue
        value = data[f.name]
        if dataclasses.is_dataclass(getattr(cfg, f.name)):
            sub = getattr(cfg, f.name)
            for sf in dataclasses.fields(sub):
                if sf.name in value:
                    setattr(sub, sf.name, coerce(value[sf.name], field_type(type(sub), sf.name), sf.name))
        else:
            setattr(cfg, f.name, value)
    return cfg


def schedule(cfg: Config, num_images: int, explicit: Collection[str] = ()) -> tuple[Config, list[str]]:
    """The training length and LR schedule for a dataset of `num_images` images -> (a copy of `cfg`, notes).

    `solver.epochs=E` (> 0) sets `max_iter = ceil(E * num_images / ims_per_batch)`; a `solver.max_iter` among the
    user's keys can only be one that restates the value it had (`apply_overrides` refuses one that changes it), and the
    note names it as the value epochs replace. When `max_iter` then differs from
    the one the recipe's `steps` and `warmup_iters` were made for, those scale with it (same fractions of the run),
    unless the user set them (`explicit`: the keys given as overrides); user-set values that no longer fit the run
    (a warm-up as long as the run, a step after its end) are kept and named in a note.
    """
    out = copy.deepcopy(cfg)
    s, notes = out.solver, []
    if s.epochs > 0:
        per_epoch = max(1, math.ceil(num_images / s.ims_per_batch))
        s.max_iter = max(1, math.ceil(s.epochs * num_images / s.ims_per_batch))
        replaced = f", in place of solver.max_iter={cfg.solver.max_iter}" if "solver.max_iter" in explicit else ""
        notes.append(
            f"solver.epochs={s.epochs:g}: {s.max_iter} iterations ({per_epoch} per epoch of {num_images} images at "
            f"batch {s.ims_per_batch}){replaced}"
        )
    recipe = cfg.solver.max_iter if s.epochs <= 0 and "solver.max_iter" not in explicit else None
    base = _recipe_max_iter(cfg) if recipe is None else recipe
    scaled_steps = scaled_warmup = False
    if base and base != s.max_iter:
        ratio = s.max_iter / base
        if "solver.steps" not in explicit and s.steps:
            old = s.steps
            s.steps, scaled_steps = tuple(max(1, round(x * ratio)) for x in old), True
            notes.append(f"solver.steps scaled with the run length: {list(old)} -> {list(s.steps)}")
        if "solver.warmup_iters" not in explicit and s.warmup_iters:
            old_w = s.warmup_iters
            s.warmup_iters, scaled_warmup = min(max(1, round(old_w * ratio)), s.max_iter - 1), True
            notes.append(f"solver.warmup_iters scaled with the run length: {old_w} -> {s.warmup_iters}")
    if s.warmup_iters >= s.max_iter and not scaled_warmup:
        notes.append(
            f"solver.warmup_iters={s.warmup_iters} is not shorter than the run (max_iter {s.max_iter}): the base LR "
            "is never reached"
        )
    late = [x for x in s.steps if x >= s.max_iter]
    if late and not scaled_steps:
        notes.append(f"solver.steps {late} fall at or after the end of the run (max_iter {s.max_iter}): no decay there")
    return out, notes


def _recipe_max_iter(cfg: Config) -> int:
    """The max_iter the variant's recipe (its steps and warm-up) was made for: the variant's default."""
    try:
        return VARIANTS[canonical_name(cfg.name)]().solver.max_iter
    except (ConfigError, KeyError):
        return cfg.solver.max_iter


def override_keys(overrides: list[str]) -> set[str]:
    """The `section.key` names a list of `section.key=value` overrides sets."""
    return {item.split("=", 1)[0].strip() for item in overrides if "=" in item}


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return a copy of `cfg` with `section.key=value` overrides applied (values parsed as YAML).

    `solver.epochs` (> 0) and `solver.max_iter` both set the run length, and epochs would win: overrides that set a
    new `solver.max_iter` while epochs are on (set here or already in `cfg`) are a `ConfigError` asking for one of
    them, instead of a max_iter silently ignored. A max_iter equal to the one `cfg` had is no choice of length (an
    official config file restating the recipe, a copied config) and stands aside for epochs (`schedule`'s note
    names it)."""
    cfg = copy.deepcopy(cfg)
    max_iter_before, max_iter_set = cfg.solver.max_iter, False
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. solver.max_iter=1000)")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        text = raw.strip()
        if text.startswith("(") and text.endswith(")"):  # Python tuple spelling: (160, 192) -> [160, 192]
            text = f"[{text[1:-1]}]"
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = raw
        if len(parts) == 1 and parts[0] in ("name", "weights_url", "coco_ap"):
            setattr(cfg, parts[0], coerce(value, field_type(Config, parts[0]), key))
            continue
        sections = [f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(getattr(cfg, f.name))]
        if len(parts) != 2 or parts[0] not in sections:
            raise ConfigError(
                f"unknown config key {key!r}; keys look like <section>.<name> with section one of {', '.join(sections)}"
            )
        sub = getattr(cfg, parts[0])
        names = [f.name for f in dataclasses.fields(sub)]
        if parts[1] not in names:
            close = difflib.get_close_matches(parts[1], names, n=1)
            hint = f" (did you mean {parts[0]}.{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}; {parts[0]} has: {', '.join(names)}")
        setattr(sub, parts[1], coerce(value, field_type(type(sub), parts[1]), key))
        max_iter_set = max_iter_set or key == "solver.max_iter"
    s = cfg.solver
    if max_iter_set and s.epochs > 0 and s.max_iter != max_iter_before:
        raise ConfigError(
            f"solver.epochs={s.epochs:g} and solver.max_iter={s.max_iter} both set the run length; give one of them "
            "(solver.epochs=0 turns epochs off)"
        )
    return validate(cfg)
