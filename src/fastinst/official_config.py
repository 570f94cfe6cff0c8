"""The official repository's detectron2-style YAML configs and `KEY VALUE` command-line pairs, mapped to `Config`.

`load_official_config(path, opts)` reads a file such as `configs/coco/instance-segmentation/
fastinst_R50_ppm-fpn_x1_576.yaml` (its `_BASE_` chain resolved relative to each file, values decoded the way
detectron2's yacs decodes them: `"(416, 448)"` is a tuple), then the `KEY VALUE` pairs of a command line
(`MODEL.WEIGHTS ckpt.pth SOLVER.IMS_PER_BATCH 8`), and returns an `OfficialRun`: our typed `Config` plus what a config
says about the run rather than the network (MODEL.WEIGHTS, DATASETS.TRAIN/TEST, OUTPUT_DIR, MODEL.DEVICE).

Every key is one of four kinds (the table `KEYS`, documented in docs/official.md):

* mapped to a field of ours (`MODEL.FASTINST.DEC_LAYERS` -> `model.dec_layers`), with the field's type checks;
* fixed: fastinst implements one value (`MODEL.META_ARCHITECTURE FastInst`, `INPUT.FORMAT RGB`); another value is an
  error naming the key, because silently training something else would be worse;
* without meaning here (`VERSION`, `CUDNN_BENCHMARK`, `VIS_PERIOD`, the Swin keys ...): listed in one `note:` line;
* unknown: an error with detectron2's spelling of the closest key ("did you mean ...").

Keys a file leaves out keep the values of the official base file (`Fast-COCO-InstanceSegmentation.yaml`), which are
our defaults (`Config()`); SPEC §1 gives every resolved value. Nothing here imports torch.
"""

from __future__ import annotations

import ast
import copy
import difflib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, apply_overrides, canonical_name, get_config, read_yaml_mapping, validate

# A detectron2 key on a command line: upper-case dotted words (MODEL.WEIGHTS, OUTPUT_DIR, SOLVER.AMP.ENABLED).
KEY_PATTERN = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*")


@dataclass(frozen=True)
class _To:
    """Mapped onto our field `target` (`section.name`), after `convert`."""

    target: str
    convert: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class _Only:
    """fastinst implements only these values of the key."""

    allowed: tuple[Any, ...]


@dataclass(frozen=True)
class _Run:
    """A setting of the run, not of the network: an attribute of `OfficialRun`."""

    attr: str


@dataclass(frozen=True)
class _Ignored:
    """A key without meaning in fastinst; its value is not used."""


_IGNORED = _Ignored()


def _upper_choice(table: dict[str, Any], key: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        found = table.get(str(value).upper())
        if found is None:
            raise ConfigError(f"{key} {value!r} is not supported; use one of: {', '.join(table)}")
        return found

    return convert


def _sizes(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _flip(value: Any) -> bool:
    text = str(value).lower()
    if text not in ("horizontal", "none"):
        raise ConfigError(f"INPUT.RANDOM_FLIP {value!r} is not supported; use horizontal or none")
    return text == "horizontal"


def _positive(key: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise ConfigError(f"{key} {value} is not supported; the batch is padded to a positive multiple (32)")
        return value

    return convert


_RES = ("res3", "res4", "res5")

KEYS: dict[str, _To | _Only | _Run | _Ignored] = {
    # --- top level -----------------------------------------------------------------------------------------------
    "OUTPUT_DIR": _Run("output_dir"),
    "SEED": _To("solver.seed"),
    "VERSION": _IGNORED,
    "CUDNN_BENCHMARK": _IGNORED,
    "VIS_PERIOD": _IGNORED,
    "GLOBAL.HACK": _IGNORED,
    "FLOAT32_PRECISION": _IGNORED,
    # --- MODEL -----------------------------------------------------------------------------------------------------
    "MODEL.META_ARCHITECTURE": _Only(("FastInst",)),
    "MODEL.WEIGHTS": _Run("weights"),
    "MODEL.DEVICE": _Run("device"),
    "MODEL.PIXEL_MEAN": _To("model.pixel_mean"),
    "MODEL.PIXEL_STD": _To("model.pixel_std"),
    "MODEL.MASK_ON": _IGNORED,
    "MODEL.KEYPOINT_ON": _IGNORED,
    "MODEL.LOAD_PROPOSALS": _IGNORED,
    "MODEL.BACKBONE.NAME": _To(
        "model.backbone",
        _upper_choice(
            {"BUILD_RESNET_BACKBONE": "resnet", "BUILD_RESNET_VD_BACKBONE": "resnet_vd"}, "MODEL.BACKBONE.NAME"
        ),
    ),
    "MODEL.BACKBONE.FREEZE_AT": _Only((0,)),
    "MODEL.RESNETS.DEPTH": _To("model.depth"),
    "MODEL.RESNETS.NORM": _To("model.backbone_norm", _upper_choice({"FROZENBN": "FrozenBN", "BN": "BN"}, "NORM")),
    "MODEL.RESNETS.STEM_OUT_CHANNELS": _To("model.backbone_width"),
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": _To("model.deform_stages"),
    "MODEL.RESNETS.STRIDE_IN_1X1": _Only((False,)),
    "MODEL.RESNETS.OUT_FEATURES": _Only((_RES,)),
    "MODEL.RESNETS.NUM_GROUPS": _Only((1,)),
    "MODEL.RESNETS.WIDTH_PER_GROUP": _Only((64,)),
    "MODEL.RESNETS.RES2_OUT_CHANNELS": _Only((256,)),
    "MODEL.RESNETS.RES5_DILATION": _Only((1,)),
    "MODEL.RESNETS.DEFORM_MODULATED": _Only((False,)),
    "MODEL.RESNETS.DEFORM_NUM_GROUPS": _Only((1,)),
    "MODEL.RESNETS.STEM_TYPE": _IGNORED,  # "not used" in the official base file
    "MODEL.RESNETS.RES5_MULTI_GRID": _IGNORED,  # "not used"
    "MODEL.RESNETS.RES4_DILATION": _Only((1,)),
    "MODEL.SEM_SEG_HEAD.NAME": _Only(("FastInstHead",)),
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": _Only(("PyramidPoolingModuleFPN",)),
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": _Only((_RES,)),
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": _To("model.num_classes"),
    "MODEL.SEM_SEG_HEAD.NORM": _Only(("GN",)),
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": _IGNORED,  # semantic segmentation only
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": _IGNORED,
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": _IGNORED,
    "MODEL.SEM_SEG_HEAD.LOSS_TYPE": _IGNORED,
    "MODEL.SEM_SEG_HEAD.PROJECT_FEATURES": _IGNORED,
    "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS": _IGNORED,
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS": _IGNORED,
    "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS": _IGNORED,
    "MODEL.SEM_SEG_HEAD.ASPP_DROPOUT": _IGNORED,
    "MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV": _IGNORED,
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": _IGNORED,
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": _IGNORED,
    # CONVS_DIM / MASK_DIM: our pixel decoder and mask features are HIDDEN_DIM wide, as in every official config
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": _Run("convs_dim"),
    "MODEL.SEM_SEG_HEAD.MASK_DIM": _Run("mask_dim"),
    "MODEL.FASTINST.TRANSFORMER_DECODER_NAME": _Only(("FastInstDecoder",)),
    "MODEL.FASTINST.DEEP_SUPERVISION": _To("loss.deep_supervision"),
    "MODEL.FASTINST.NO_OBJECT_WEIGHT": _To("loss.no_object_weight"),
    "MODEL.FASTINST.CLASS_WEIGHT": _To("loss.class_weight"),
    "MODEL.FASTINST.MASK_WEIGHT": _To("loss.mask_weight"),
    "MODEL.FASTINST.DICE_WEIGHT": _To("loss.dice_weight"),
    "MODEL.FASTINST.LOCATION_WEIGHT": _To("loss.location_weight"),
    "MODEL.FASTINST.PROPOSAL_WEIGHT": _To("loss.proposal_weight"),
    "MODEL.FASTINST.TRAIN_NUM_POINTS": _To("loss.num_points"),
    "MODEL.FASTINST.OVERSAMPLE_RATIO": _To("loss.oversample_ratio"),
    "MODEL.FASTINST.IMPORTANCE_SAMPLE_RATIO": _To("loss.importance_sample_ratio"),
    "MODEL.FASTINST.HIDDEN_DIM": _To("model.hidden_dim"),
    "MODEL.FASTINST.NUM_OBJECT_QUERIES": _To("model.num_queries"),
    "MODEL.FASTINST.NUM_AUX_QUERIES": _To("model.num_aux_queries"),
    "MODEL.FASTINST.NHEADS": _To("model.nheads"),
    "MODEL.FASTINST.DIM_FEEDFORWARD": _To("model.dim_feedforward"),
    "MODEL.FASTINST.DEC_LAYERS": _To("model.dec_layers"),
    "MODEL.FASTINST.SIZE_DIVISIBILITY": _To("model.size_divisibility", _positive("MODEL.FASTINST.SIZE_DIVISIBILITY")),
    "MODEL.FASTINST.DROPOUT": _Only((0.0,)),
    "MODEL.FASTINST.PRE_NORM": _Only((False,)),
    "MODEL.FASTINST.TEST.INSTANCE_ON": _Only((True,)),
    "MODEL.FASTINST.TEST.SEMANTIC_ON": _Only((False,)),
    "MODEL.FASTINST.TEST.PANOPTIC_ON": _Only((False,)),
    "MODEL.FASTINST.TEST.OVERLAP_THRESHOLD": _IGNORED,  # panoptic inference only
    "MODEL.FASTINST.TEST.OBJECT_MASK_THRESHOLD": _IGNORED,  # panoptic inference only
    "MODEL.FASTINST.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": _IGNORED,  # forced on for instances
    # --- SOLVER ----------------------------------------------------------------------------------------------------
    "SOLVER.OPTIMIZER": _To("solver.optimizer", _upper_choice({"ADAMW": "adamw", "SGD": "sgd"}, "SOLVER.OPTIMIZER")),
    "SOLVER.BASE_LR": _To("solver.base_lr"),
    "SOLVER.WEIGHT_DECAY": _To("solver.weight_decay"),
    "SOLVER.BACKBONE_MULTIPLIER": _To("solver.backbone_multiplier"),
    "SOLVER.IMS_PER_BATCH": _To("solver.ims_per_batch"),
    "SOLVER.MAX_ITER": _To("solver.max_iter"),
    "SOLVER.STEPS": _To("solver.steps", _sizes),
    "SOLVER.GAMMA": _To("solver.gamma"),
    "SOLVER.CHECKPOINT_PERIOD": _To("solver.checkpoint_period"),
    "SOLVER.AMP.ENABLED": _To("solver.amp"),
    "SOLVER.WARMUP_ITERS": _Run("warmup_iters"),  # with WARMUP_FACTOR, see _finish
    "SOLVER.WARMUP_FACTOR": _Run("warmup_factor"),
    "SOLVER.WARMUP_METHOD": _Only(("linear",)),
    "SOLVER.LR_SCHEDULER_NAME": _Only(("WarmupMultiStepLR",)),
    "SOLVER.MOMENTUM": _Only((0.9,)),
    "SOLVER.NESTEROV": _Only((False,)),
    "SOLVER.WEIGHT_DECAY_NORM": _Only((0.0,)),
    "SOLVER.WEIGHT_DECAY_EMBED": _Only((0.0,)),
    "SOLVER.BIAS_LR_FACTOR": _IGNORED,  # not used by FastInst's optimizer builder
    "SOLVER.WEIGHT_DECAY_BIAS": _IGNORED,  # not used by FastInst's optimizer builder
    "SOLVER.REFERENCE_WORLD_SIZE": _Only((0,)),
    "SOLVER.BASE_LR_END": _IGNORED,  # cosine schedules only
    "SOLVER.NUM_DECAYS": _IGNORED,
    "SOLVER.RESCALE_INTERVAL": _IGNORED,
    "SOLVER.POLY_LR_POWER": _IGNORED,
    "SOLVER.POLY_LR_CONSTANT_ENDING": _IGNORED,
    "SOLVER.CLIP_GRADIENTS.ENABLED": _Run("clip_enabled"),  # with the three below, see _finish
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": _Run("clip_type"),
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": _Run("clip_value"),
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": _Run("clip_norm_type"),
    # --- INPUT -----------------------------------------------------------------------------------------------------
    "INPUT.MIN_SIZE_TRAIN": _To("input.min_size_train", _sizes),
    "INPUT.MAX_SIZE_TRAIN": _To("input.max_size_train"),
    "INPUT.MIN_SIZE_TEST": _To("input.min_size_test"),
    "INPUT.MAX_SIZE_TEST": _To("input.max_size_test"),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": _Only(("choice",)),
    "INPUT.RANDOM_FLIP": _To("input.random_flip", _flip),
    "INPUT.CROP.ENABLED": _To("input.crop_enabled"),
    "INPUT.CROP.TYPE": _Only(("absolute_range",)),
    "INPUT.CROP.SIZE": _To("input.crop_size"),
    "INPUT.CROP.RESIZE.ENABLED": _Only((True,)),
    "INPUT.CROP.RESIZE.MIN_SIZE": _To("input.crop_resize_sizes", _sizes),
    "INPUT.CROP.RESIZE.MIN_SIZE_TRAIN_SAMPLING": _Only(("choice",)),
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": _IGNORED,  # semantic segmentation only
    "INPUT.FORMAT": _Only(("RGB",)),
    "INPUT.DATASET_MAPPER_NAME": _Only(("fastinst_instance",)),
    "INPUT.COLOR_AUG_SSD": _Only((False,)),
    "INPUT.SIZE_DIVISIBILITY": _IGNORED,  # the model pads (MODEL.FASTINST.SIZE_DIVISIBILITY)
    "INPUT.MASK_FORMAT": _IGNORED,  # polygons and RLE are both read as they come
    "INPUT.IMAGE_SIZE": _IGNORED,  # large-scale jitter, unused by the FastInst mapper
    "INPUT.MIN_SCALE": _IGNORED,
    "INPUT.MAX_SCALE": _IGNORED,
    # --- TEST ------------------------------------------------------------------------------------------------------
    "TEST.EVAL_PERIOD": _To("solver.eval_period"),
    "TEST.DETECTIONS_PER_IMAGE": _Only((100,)),
    "TEST.AUG.ENABLED": _Only((False,)),
    "TEST.AUG.MIN_SIZES": _IGNORED,
    "TEST.AUG.MAX_SIZE": _IGNORED,
    "TEST.AUG.FLIP": _IGNORED,
    "TEST.PRECISE_BN.ENABLED": _Only((False,)),
    "TEST.PRECISE_BN.NUM_ITER": _IGNORED,
    "TEST.EXPECTED_RESULTS": _IGNORED,
    "TEST.KEYPOINT_OKS_SIGMAS": _IGNORED,
    # --- DATASETS / DATALOADER -------------------------------------------------------------------------------------
    "DATASETS.TRAIN": _Run("train_datasets"),
    "DATASETS.TEST": _Run("test_datasets"),
    "DATASETS.PROPOSAL_FILES_TRAIN": _IGNORED,
    "DATASETS.PROPOSAL_FILES_TEST": _IGNORED,
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN": _IGNORED,
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST": _IGNORED,
    "DATALOADER.NUM_WORKERS": _To("solver.num_workers"),
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS": _Only((True,)),
    "DATALOADER.ASPECT_RATIO_GROUPING": _Only((True,)),
    "DATALOADER.SAMPLER_TRAIN": _Only(("TrainingSampler",)),
    "DATALOADER.REPEAT_THRESHOLD": _IGNORED,
    "DATALOADER.REPEAT_SQRT": _IGNORED,
}

# detectron2 subtrees of other architectures (R-CNN heads, RPN, RetinaNet, Swin ...): never read by FastInst.
IGNORED_PREFIXES = (
    "MODEL.ANCHOR_GENERATOR.",
    "MODEL.RPN.",
    "MODEL.PROPOSAL_GENERATOR.",
    "MODEL.ROI_HEADS.",
    "MODEL.ROI_BOX_HEAD.",
    "MODEL.ROI_BOX_CASCADE_HEAD.",
    "MODEL.ROI_MASK_HEAD.",
    "MODEL.ROI_KEYPOINT_HEAD.",
    "MODEL.PANOPTIC_FPN.",
    "MODEL.RETINANET.",
    "MODEL.FPN.",
    "MODEL.SWIN.",
)

# what detectron2 names the pretrained-weights prefix `detectron2://`
DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"


@dataclass
class OfficialRun:
    """An official config resolved: `cfg` (the network and recipe) and the run settings the file names.

    `fields` maps each of our fields a key set (`model.dec_layers`) to that key (`MODEL.FASTINST.DEC_LAYERS`);
    `ignored` lists the keys without meaning here, in the order met.
    """

    cfg: Config
    weights: str = ""
    train_datasets: tuple[str, ...] = ()
    test_datasets: tuple[str, ...] = ()
    output_dir: str = ""
    device: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # read together by _finish, then folded into cfg
    warmup_iters: int | None = None
    warmup_factor: float | None = None
    clip_enabled: bool | None = None
    clip_type: str | None = None
    clip_value: float | None = None
    clip_norm_type: float | None = None
    convs_dim: int | None = None
    mask_dim: int | None = None

    def note(self) -> str | None:
        """The one `note:` line naming the keys that were read but mean nothing here (None when there are none)."""
        if not self.ignored:
            return None
        return f"note: ignored (no meaning in fastinst): {', '.join(dict.fromkeys(self.ignored))}"


def decode_value(value: Any) -> Any:
    """A value as detectron2's yacs decodes it: strings that are Python literals become them (`"(1, 2)"` -> tuple,
    `"8"` -> 8); anything else stays as it is."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: "{[]: 1}"
        return value


def _flatten(data: dict, prefix: str, out: dict[str, Any], source: Path) -> None:
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: key {key!r} is not a string")
        name = prefix + key
        if isinstance(value, dict):
            _flatten(value, name + ".", out, source)
        else:
            out[name] = decode_value(value)


def read_official_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The flat `{"MODEL.FASTINST.DEC_LAYERS": 1, ...}` of an official YAML file with its `_BASE_` chain merged
    (bases first, each `_BASE_` relative to the file naming it); `ConfigError` for a missing, unreadable or cyclic
    file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"{path}: _BASE_ chain loops back to this file")
    data = read_yaml_mapping(path)
    flat: dict[str, Any] = {}
    base = data.pop("_BASE_", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: _BASE_ must be a file name (a string), got {_shown(base)}")
        base_path = Path(base).expanduser()
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        flat.update(read_official_yaml(base_path, (*_seen, resolved)))
    _flatten(data, "", flat, path)
    return flat


def parse_opts(opts: Iterable[str]) -> dict[str, Any]:
    """detectron2's trailing `KEY VALUE KEY VALUE ...` list -> `{KEY: decoded value}` (values decoded like yacs)."""
    items = list(opts)
    if len(items) % 2:
        raise ConfigError(f"{items[-1]} needs a value (the command line takes KEY VALUE pairs, e.g. MODEL.WEIGHTS x)")
    out: dict[str, Any] = {}
    for key, value in zip(items[0::2], items[1::2], strict=True):
        if not KEY_PATTERN.fullmatch(key):
            raise ConfigError(f"{key!r} is not a config key (detectron2 keys look like SOLVER.IMS_PER_BATCH)")
        out[key] = decode_value(value)
    return out


def is_official_key(text: str) -> bool:
    """Whether a command-line word is a detectron2 key (upper-case dotted), as opposed to our `section.key=value`."""
    return KEY_PATTERN.fullmatch(text) is not None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _unknown(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(KEYS), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{source}: unknown config key {key}{hint}; see docs/official.md for the keys fastinst reads")


def apply_official(run: OfficialRun, values: dict[str, Any], source: str) -> OfficialRun:
    """Apply `{KEY: value}` (from a file or a command line, named `source` in messages) to `run`, in place."""
    for key, value in values.items():
        spec = KEYS.get(key)
        if spec is None:
            if key.startswith(IGNORED_PREFIXES):
                spec = _IGNORED
            else:
                raise _unknown(key, source)
        if isinstance(spec, _Ignored):
            run.ignored.append(key)
        elif isinstance(spec, _Only):
            if not any(_same(value, a) for a in spec.allowed):
                shown = " or ".join(repr(list(a) if isinstance(a, tuple) else a) for a in spec.allowed)
                raise ConfigError(f"{source}: {key} {value!r} is not supported; fastinst implements {shown}")
        elif isinstance(spec, _Run):
            if spec.attr in ("train_datasets", "test_datasets"):
                names = _sizes(value)
                if not all(isinstance(v, str) for v in names):
                    raise ConfigError(f"{source}: {key} {_shown(value)}: expected dataset names (strings)")
                value = tuple(names)
            elif spec.attr in ("weights", "output_dir", "device"):
                if value is not None and not isinstance(value, str):
                    raise ConfigError(f"{source}: {key} {_shown(value)}: expected a string")
                value = value or ""
            setattr(run, spec.attr, value)
        else:
            try:
                converted = spec.convert(value) if spec.convert else value
                run.cfg = apply_overrides(run.cfg, [f"{spec.target}={json.dumps(converted)}"])
            except (ConfigError, TypeError, ValueError) as e:
                raise ConfigError(f"{source}: {key} {_shown(value)}: {e}") from None
            run.fields[spec.target] = key
    return run


def _finish(run: OfficialRun, source: str) -> OfficialRun:
    """Fold the keys that only mean something together into `cfg` (warm-up, gradient clipping, head widths)."""
    s = run.cfg.solver
    for key, value, expected in (
        ("SOLVER.WARMUP_ITERS", run.warmup_iters, int),
        ("SOLVER.WARMUP_FACTOR", run.warmup_factor, (int, float)),
        ("SOLVER.CLIP_GRADIENTS.ENABLED", run.clip_enabled, bool),
        ("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", run.clip_value, (int, float)),
        ("SOLVER.CLIP_GRADIENTS.NORM_TYPE", run.clip_norm_type, (int, float)),
        ("MODEL.SEM_SEG_HEAD.CONVS_DIM", run.convs_dim, int),
        ("MODEL.SEM_SEG_HEAD.MASK_DIM", run.mask_dim, int),
    ):
        wrong = not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool)
        if value is not None and not wrong and expected is not bool and not _finite(value):
            wrong = True
        if value is not None and wrong:
            raise ConfigError(
                f"{source}: {key} {_shown(value)}: expected {'true or false' if expected is bool else 'a number'}"
            )
    if run.clip_type is not None and not isinstance(run.clip_type, str):
        raise ConfigError(f"{source}: SOLVER.CLIP_GRADIENTS.CLIP_TYPE {_shown(run.clip_type)}: expected a string")
    if run.warmup_iters is not None or run.warmup_factor is not None:
        factor = 0.001 if run.warmup_factor is None else float(run.warmup_factor)  # detectron2's default
        iters = 1000 if run.warmup_iters is None else int(run.warmup_iters)
        # detectron2 ramps the lr from WARMUP_FACTOR to 1; a factor of 1 (the FastInst recipe) means no warm-up.
        # Ours ramps from 1/iters, the same as a small factor.
        s.warmup_iters = 0 if factor >= 1.0 else iters
        if 0.01 < factor < 1.0 and iters > 0:
            run.notes.append(
                f"note: SOLVER.WARMUP_FACTOR {factor}: fastinst's linear warm-up starts at 1/{iters} of the lr"
            )
        run.fields["solver.warmup_iters"] = "SOLVER.WARMUP_ITERS"
    if run.clip_enabled:
        kind = str(run.clip_type or "value")
        if kind != "full_model" or float(run.clip_norm_type or 2.0) != 2.0:
            raise ConfigError(
                f"{source}: SOLVER.CLIP_GRADIENTS: fastinst clips the L2 norm of the whole model "
                "(CLIP_TYPE full_model, NORM_TYPE 2.0)"
            )
        s.clip_grad_norm = float(run.clip_value if run.clip_value is not None else 1.0)
        run.fields["solver.clip_grad_norm"] = "SOLVER.CLIP_GRADIENTS.CLIP_VALUE"
    elif run.clip_enabled is False:
        s.clip_grad_norm = 0.0
        run.fields["solver.clip_grad_norm"] = "SOLVER.CLIP_GRADIENTS.ENABLED"
    for key, width in (("CONVS_DIM", run.convs_dim), ("MASK_DIM", run.mask_dim)):
        if width is not None and width != run.cfg.model.hidden_dim:
            raise ConfigError(
                f"{source}: MODEL.SEM_SEG_HEAD.{key} {width} is not supported; fastinst's pixel decoder is "
                f"MODEL.FASTINST.HIDDEN_DIM ({run.cfg.model.hidden_dim}) wide"
            )
    try:  # the warm-up and clipping folded in above bypass apply_overrides' range checks
        validate(run.cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return run


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_official_config(
    path: str | Path | None = None, opts: Iterable[str] = (), base: Config | None = None
) -> OfficialRun:
    """Resolve an official YAML file (or none) plus command-line `KEY VALUE` pairs `opts` into an `OfficialRun`.

    Without `path` the pairs apply to `base` (default: the official base recipe, `Config()`). The config is named
    after the file (`fastinst_R50_ppm-fpn_x1_576` for the official D1 file), so checkpoints say what they are.
    """
    cfg = copy.deepcopy(base) if base is not None else Config()
    if path is not None:
        stem = Path(path).stem
        try:
            cfg.name = canonical_name(stem)
            published = get_config(cfg.name)
            cfg.weights_url, cfg.coco_ap = published.weights_url, published.coco_ap
        except ConfigError:
            cfg.name = stem
    run = OfficialRun(cfg=cfg)
    if path is not None:
        apply_official(run, read_official_yaml(path), str(path))
    pairs = parse_opts(opts)
    if pairs:
        apply_official(run, pairs, "command line")
    return _finish(run, str(path) if path is not None else "command line")


def weights_location(weights: str) -> str:
    """MODEL.WEIGHTS as a path or URL: `detectron2://X` becomes detectron2's download URL for X."""
    if weights.startswith("detectron2://"):
        return DETECTRON2_URL + weights.removeprefix("detectron2://")
    return weights
