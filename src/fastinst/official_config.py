"""The official repository's detectron2-style YAML configs and `KEY VALUE` command-line pairs, mapped to `Config`.

`load_official_config(path, opts)` reads a file such as `configs/coco/instance-segmentation/
fastinst_R50_ppm-fpn_x1_576.yaml` (its `_BASE_` chain resolved relative to each file, values decoded the way
detectron2's yacs decodes them: `"(416, 448)"` is a tuple), then the `KEY VALUE` pairs of a command line
(`MODEL.WEIGHTS ckpt.pth SOLVER.IMS_PER_BATCH 8`), and returns an `OfficialRun`: our typed `Config` plus what a config
says about the run rather than the network (MODEL.WEIGHTS, DATASETS.TRAIN/TEST, OUTPUT_DIR, MODEL.DEVICE).

Every key is one of four kinds (the table `KEYS` of `fastinst.official_keys`, documented in docs/official.md):

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, apply_overrides, canonical_name, get_config, read_yaml_mapping, validate
from .errors import shown
from .official_keys import IGNORED, IGNORED_PREFIXES, KEYS, Ignored, Only, RunSetting, as_tuple

# A detectron2 key on a command line: upper-case dotted words (MODEL.WEIGHTS, OUTPUT_DIR, SOLVER.AMP.ENABLED).
KEY_PATTERN = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*")

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
            raise ConfigError(f"{path}: _BASE_ must be a file name (a string), got {shown(base)}")
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
                spec = IGNORED
            else:
                raise _unknown(key, source)
        if isinstance(spec, Ignored):
            run.ignored.append(key)
        elif isinstance(spec, Only):
            if not any(_same(value, a) for a in spec.allowed):
                allowed = " or ".join(repr(list(a) if isinstance(a, tuple) else a) for a in spec.allowed)
                raise ConfigError(f"{source}: {key} {value!r} is not supported; fastinst implements {allowed}")
        elif isinstance(spec, RunSetting):
            if spec.attr in ("train_datasets", "test_datasets"):
                names = as_tuple(value)
                if not all(isinstance(v, str) for v in names):
                    raise ConfigError(f"{source}: {key} {shown(value)}: expected dataset names (strings)")
                value = tuple(names)
            elif spec.attr in ("weights", "output_dir", "device"):
                if value is not None and not isinstance(value, str):
                    raise ConfigError(f"{source}: {key} {shown(value)}: expected a string")
                value = value or ""
            setattr(run, spec.attr, value)
        else:
            try:
                converted = spec.convert(value) if spec.convert else value
                run.cfg = apply_overrides(run.cfg, [f"{spec.target}={json.dumps(converted)}"])
            except (ConfigError, TypeError, ValueError) as e:
                raise ConfigError(f"{source}: {key} {shown(value)}: {e}") from None
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
                f"{source}: {key} {shown(value)}: expected {'true or false' if expected is bool else 'a number'}"
            )
    if run.clip_type is not None and not isinstance(run.clip_type, str):
        raise ConfigError(f"{source}: SOLVER.CLIP_GRADIENTS.CLIP_TYPE {shown(run.clip_type)}: expected a string")
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
