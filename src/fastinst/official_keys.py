"""The table of every key of the official FastInst/detectron2 configs: what `fastinst.official_config` does with each.

`KEYS` maps a detectron2 key to one of four kinds of entry (documented in docs/official.md):

* `To(target, convert)`: mapped to a field of ours (`MODEL.FASTINST.DEC_LAYERS` -> `model.dec_layers`), after
  `convert`, with the field's type checks;
* `Only(allowed)`: fixed, fastinst implements these values only (`MODEL.META_ARCHITECTURE FastInst`);
* `RunSetting(attr)`: a setting of the run rather than the network (MODEL.WEIGHTS, DATASETS.TRAIN, OUTPUT_DIR ...), an
  attribute of `OfficialRun`;
* `IGNORED`: without meaning here (`VERSION`, `CUDNN_BENCHMARK`, the Swin keys ...).

`IGNORED_PREFIXES` are whole detectron2 subtrees of other architectures, ignored as well. A key in neither is unknown.
Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import ConfigError


@dataclass(frozen=True)
class To:
    """Mapped onto our field `target` (`section.name`), after `convert`."""

    target: str
    convert: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Only:
    """fastinst implements only these values of the key."""

    allowed: tuple[Any, ...]


@dataclass(frozen=True)
class RunSetting:
    """A setting of the run, not of the network: an attribute of `OfficialRun`."""

    attr: str


@dataclass(frozen=True)
class Ignored:
    """A key without meaning in fastinst; its value is not used."""


IGNORED = Ignored()


def _upper_choice(table: dict[str, Any], key: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        found = table.get(str(value).upper())
        if found is None:
            raise ConfigError(f"{key} {value!r} is not supported; use one of: {', '.join(table)}")
        return found

    return convert


def as_tuple(value: Any) -> tuple[Any, ...]:
    """A YAML list or a single value -> a tuple (the size lists, STEPS, DATASETS.TRAIN/TEST)."""
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

KEYS: dict[str, To | Only | RunSetting | Ignored] = {
    # --- top level -----------------------------------------------------------------------------------------------
    "OUTPUT_DIR": RunSetting("output_dir"),
    "SEED": To("solver.seed"),
    "VERSION": IGNORED,
    "CUDNN_BENCHMARK": IGNORED,
    "VIS_PERIOD": IGNORED,
    "GLOBAL.HACK": IGNORED,
    "FLOAT32_PRECISION": IGNORED,
    # --- MODEL -----------------------------------------------------------------------------------------------------
    "MODEL.META_ARCHITECTURE": Only(("FastInst",)),
    "MODEL.WEIGHTS": RunSetting("weights"),
    "MODEL.DEVICE": RunSetting("device"),
    "MODEL.PIXEL_MEAN": To("model.pixel_mean"),
    "MODEL.PIXEL_STD": To("model.pixel_std"),
    "MODEL.MASK_ON": IGNORED,
    "MODEL.KEYPOINT_ON": IGNORED,
    "MODEL.LOAD_PROPOSALS": IGNORED,
    "MODEL.BACKBONE.NAME": To(
        "model.backbone",
        _upper_choice(
            {"BUILD_RESNET_BACKBONE": "resnet", "BUILD_RESNET_VD_BACKBONE": "resnet_vd"}, "MODEL.BACKBONE.NAME"
        ),
    ),
    "MODEL.BACKBONE.FREEZE_AT": Only((0,)),
    "MODEL.RESNETS.DEPTH": To("model.depth"),
    "MODEL.RESNETS.NORM": To("model.backbone_norm", _upper_choice({"FROZENBN": "FrozenBN", "BN": "BN"}, "NORM")),
    "MODEL.RESNETS.STEM_OUT_CHANNELS": To("model.backbone_width"),
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": To("model.deform_stages"),
    "MODEL.RESNETS.STRIDE_IN_1X1": Only((False,)),
    "MODEL.RESNETS.OUT_FEATURES": Only((_RES,)),
    "MODEL.RESNETS.NUM_GROUPS": Only((1,)),
    "MODEL.RESNETS.WIDTH_PER_GROUP": Only((64,)),
    "MODEL.RESNETS.RES2_OUT_CHANNELS": Only((256,)),
    "MODEL.RESNETS.RES5_DILATION": Only((1,)),
    "MODEL.RESNETS.DEFORM_MODULATED": Only((False,)),
    "MODEL.RESNETS.DEFORM_NUM_GROUPS": Only((1,)),
    "MODEL.RESNETS.STEM_TYPE": IGNORED,  # "not used" in the official base file
    "MODEL.RESNETS.RES5_MULTI_GRID": IGNORED,  # "not used"
    "MODEL.RESNETS.RES4_DILATION": Only((1,)),
    "MODEL.SEM_SEG_HEAD.NAME": Only(("FastInstHead",)),
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": Only(("PyramidPoolingModuleFPN",)),
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": Only((_RES,)),
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": To("model.num_classes"),
    "MODEL.SEM_SEG_HEAD.NORM": Only(("GN",)),
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": IGNORED,  # semantic segmentation only
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": IGNORED,
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": IGNORED,
    "MODEL.SEM_SEG_HEAD.LOSS_TYPE": IGNORED,
    "MODEL.SEM_SEG_HEAD.PROJECT_FEATURES": IGNORED,
    "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS": IGNORED,
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS": IGNORED,
    "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS": IGNORED,
    "MODEL.SEM_SEG_HEAD.ASPP_DROPOUT": IGNORED,
    "MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV": IGNORED,
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": IGNORED,
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": IGNORED,
    # CONVS_DIM / MASK_DIM: our pixel decoder and mask features are HIDDEN_DIM wide, as in every official config
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": RunSetting("convs_dim"),
    "MODEL.SEM_SEG_HEAD.MASK_DIM": RunSetting("mask_dim"),
    "MODEL.FASTINST.TRANSFORMER_DECODER_NAME": Only(("FastInstDecoder",)),
    "MODEL.FASTINST.DEEP_SUPERVISION": To("loss.deep_supervision"),
    "MODEL.FASTINST.NO_OBJECT_WEIGHT": To("loss.no_object_weight"),
    "MODEL.FASTINST.CLASS_WEIGHT": To("loss.class_weight"),
    "MODEL.FASTINST.MASK_WEIGHT": To("loss.mask_weight"),
    "MODEL.FASTINST.DICE_WEIGHT": To("loss.dice_weight"),
    "MODEL.FASTINST.LOCATION_WEIGHT": To("loss.location_weight"),
    "MODEL.FASTINST.PROPOSAL_WEIGHT": To("loss.proposal_weight"),
    "MODEL.FASTINST.TRAIN_NUM_POINTS": To("loss.num_points"),
    "MODEL.FASTINST.OVERSAMPLE_RATIO": To("loss.oversample_ratio"),
    "MODEL.FASTINST.IMPORTANCE_SAMPLE_RATIO": To("loss.importance_sample_ratio"),
    "MODEL.FASTINST.HIDDEN_DIM": To("model.hidden_dim"),
    "MODEL.FASTINST.NUM_OBJECT_QUERIES": To("model.num_queries"),
    "MODEL.FASTINST.NUM_AUX_QUERIES": To("model.num_aux_queries"),
    "MODEL.FASTINST.NHEADS": To("model.nheads"),
    "MODEL.FASTINST.DIM_FEEDFORWARD": To("model.dim_feedforward"),
    "MODEL.FASTINST.DEC_LAYERS": To("model.dec_layers"),
    "MODEL.FASTINST.SIZE_DIVISIBILITY": To("model.size_divisibility", _positive("MODEL.FASTINST.SIZE_DIVISIBILITY")),
    "MODEL.FASTINST.DROPOUT": Only((0.0,)),
    "MODEL.FASTINST.PRE_NORM": Only((False,)),
    "MODEL.FASTINST.TEST.INSTANCE_ON": Only((True,)),
    "MODEL.FASTINST.TEST.SEMANTIC_ON": Only((False,)),
    "MODEL.FASTINST.TEST.PANOPTIC_ON": Only((False,)),
    "MODEL.FASTINST.TEST.OVERLAP_THRESHOLD": IGNORED,  # panoptic inference only
    "MODEL.FASTINST.TEST.OBJECT_MASK_THRESHOLD": IGNORED,  # panoptic inference only
    "MODEL.FASTINST.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": IGNORED,  # forced on for instances
    # --- SOLVER ----------------------------------------------------------------------------------------------------
    "SOLVER.OPTIMIZER": To("solver.optimizer", _upper_choice({"ADAMW": "adamw", "SGD": "sgd"}, "SOLVER.OPTIMIZER")),
    "SOLVER.BASE_LR": To("solver.base_lr"),
    "SOLVER.WEIGHT_DECAY": To("solver.weight_decay"),
    "SOLVER.BACKBONE_MULTIPLIER": To("solver.backbone_multiplier"),
    "SOLVER.IMS_PER_BATCH": To("solver.ims_per_batch"),
    "SOLVER.MAX_ITER": To("solver.max_iter"),
    "SOLVER.STEPS": To("solver.steps", as_tuple),
    "SOLVER.GAMMA": To("solver.gamma"),
    "SOLVER.CHECKPOINT_PERIOD": To("solver.checkpoint_period"),
    "SOLVER.AMP.ENABLED": To("solver.amp"),
    "SOLVER.WARMUP_ITERS": RunSetting("warmup_iters"),  # with WARMUP_FACTOR, see official_config._finish
    "SOLVER.WARMUP_FACTOR": RunSetting("warmup_factor"),
    "SOLVER.WARMUP_METHOD": Only(("linear",)),
    "SOLVER.LR_SCHEDULER_NAME": Only(("WarmupMultiStepLR",)),
    "SOLVER.MOMENTUM": Only((0.9,)),
    "SOLVER.NESTEROV": Only((False,)),
    "SOLVER.WEIGHT_DECAY_NORM": Only((0.0,)),
    "SOLVER.WEIGHT_DECAY_EMBED": Only((0.0,)),
    "SOLVER.BIAS_LR_FACTOR": IGNORED,  # not used by FastInst's optimizer builder
    "SOLVER.WEIGHT_DECAY_BIAS": IGNORED,  # not used by FastInst's optimizer builder
    "SOLVER.REFERENCE_WORLD_SIZE": Only((0,)),
    "SOLVER.BASE_LR_END": IGNORED,  # cosine schedules only
    "SOLVER.NUM_DECAYS": IGNORED,
    "SOLVER.RESCALE_INTERVAL": IGNORED,
    "SOLVER.POLY_LR_POWER": IGNORED,
    "SOLVER.POLY_LR_CONSTANT_ENDING": IGNORED,
    "SOLVER.CLIP_GRADIENTS.ENABLED": RunSetting("clip_enabled"),  # with the three below, see official_config._finish
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": RunSetting("clip_type"),
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": RunSetting("clip_value"),
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": RunSetting("clip_norm_type"),
    # --- INPUT -----------------------------------------------------------------------------------------------------
    "INPUT.MIN_SIZE_TRAIN": To("input.min_size_train", as_tuple),
    "INPUT.MAX_SIZE_TRAIN": To("input.max_size_train"),
    "INPUT.MIN_SIZE_TEST": To("input.min_size_test"),
    "INPUT.MAX_SIZE_TEST": To("input.max_size_test"),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": Only(("choice",)),
    "INPUT.RANDOM_FLIP": To("input.random_flip", _flip),
    "INPUT.CROP.ENABLED": To("input.crop_enabled"),
    "INPUT.CROP.TYPE": Only(("absolute_range",)),
    "INPUT.CROP.SIZE": To("input.crop_size"),
    "INPUT.CROP.RESIZE.ENABLED": Only((True,)),
    "INPUT.CROP.RESIZE.MIN_SIZE": To("input.crop_resize_sizes", as_tuple),
    "INPUT.CROP.RESIZE.MIN_SIZE_TRAIN_SAMPLING": Only(("choice",)),
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": IGNORED,  # semantic segmentation only
    "INPUT.FORMAT": Only(("RGB",)),
    "INPUT.DATASET_MAPPER_NAME": Only(("fastinst_instance",)),
    "INPUT.COLOR_AUG_SSD": Only((False,)),
    "INPUT.SIZE_DIVISIBILITY": IGNORED,  # the model pads (MODEL.FASTINST.SIZE_DIVISIBILITY)
    "INPUT.MASK_FORMAT": IGNORED,  # polygons and RLE are both read as they come
    "INPUT.IMAGE_SIZE": IGNORED,  # large-scale jitter, unused by the FastInst mapper
    "INPUT.MIN_SCALE": IGNORED,
    "INPUT.MAX_SCALE": IGNORED,
    # --- TEST ------------------------------------------------------------------------------------------------------
    "TEST.EVAL_PERIOD": To("solver.eval_period"),
    "TEST.DETECTIONS_PER_IMAGE": Only((100,)),
    "TEST.AUG.ENABLED": Only((False,)),
    "TEST.AUG.MIN_SIZES": IGNORED,
    "TEST.AUG.MAX_SIZE": IGNORED,
    "TEST.AUG.FLIP": IGNORED,
    "TEST.PRECISE_BN.ENABLED": Only((False,)),
    "TEST.PRECISE_BN.NUM_ITER": IGNORED,
    "TEST.EXPECTED_RESULTS": IGNORED,
    "TEST.KEYPOINT_OKS_SIGMAS": IGNORED,
    # --- DATASETS / DATALOADER -------------------------------------------------------------------------------------
    "DATASETS.TRAIN": RunSetting("train_datasets"),
    "DATASETS.TEST": RunSetting("test_datasets"),
    "DATASETS.PROPOSAL_FILES_TRAIN": IGNORED,
    "DATASETS.PROPOSAL_FILES_TEST": IGNORED,
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN": IGNORED,
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST": IGNORED,
    "DATALOADER.NUM_WORKERS": To("solver.num_workers"),
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS": Only((True,)),
    "DATALOADER.ASPECT_RATIO_GROUPING": Only((True,)),
    "DATALOADER.SAMPLER_TRAIN": Only(("TrainingSampler",)),
    "DATALOADER.REPEAT_THRESHOLD": IGNORED,
    "DATALOADER.REPEAT_SQRT": IGNORED,
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
