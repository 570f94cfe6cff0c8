"""`fastinst info --model NAME [--size H W]`: parameters (total and per part) and GFLOPs (fvcore convention).

`fastinst info NAME` (the model as a positional argument) still works and prints a deprecation note on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import FastInstError
from ._options import add_size

DEFAULT_MODEL = "fastinst-d1-r50"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "info",
        help="parameters and GFLOPs of a variant",
        description="Parameters per part and GFLOPs (one multiply-add = one flop, DCN included).",
    )
    p.add_argument(
        "--model",
        help=f"variant name, alias or YAML config; 'all' for every published variant (default {DEFAULT_MODEL})",
    )
    # the old spelling `fastinst info NAME`, kept working but hidden from --help
    p.add_argument("positional_model", nargs="?", metavar="MODEL", help=argparse.SUPPRESS)
    add_size(p, "input height and width (default: the variant's test size on a 4:3 image)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def model_info(name: str, size: tuple[int, int] | None = None) -> dict:
    """Parameters per part and GFLOPs of variant `name` on a `size` input. The model is built on the meta device:
    parameter counts and flops need only shapes (`fastinst.flops.count_flops`), so nothing is allocated or
    initialised and no real forward runs (the numbers are the same: tests/test_flops.py)."""
    import torch

    from ..config import config_file, get_config
    from ..factory import build_model
    from ..flops import count_flops
    from ..model.preprocess import resize_shape

    cfg = get_config(name)
    user_yaml = name.endswith((".yaml", ".yml")) and Path(name).is_file()
    source = Path(name).resolve() if user_yaml else config_file(cfg.name)
    with torch.device("meta"):
        model = build_model(cfg)
    if size is None:  # a 480x640 (COCO-typical) photo at the variant's test resize
        size = resize_shape(480, 640, cfg.input.min_size_test, cfg.input.max_size_test)
    parts = {
        "backbone": model.backbone,
        "pixel_decoder": model.sem_seg_head.pixel_decoder,
        "decoder": model.sem_seg_head.predictor,
    }
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    params["total"] = sum(p.numel() for p in model.parameters())
    with torch.no_grad():  # not set_grad_enabled(False): `run` is called in-process by tests and the Python API
        flops = count_flops(model, *size)
    return {
        "model": cfg.name,
        "config": str(source),
        "size": list(size),
        "params": params,
        "gflops": {k: round(v / 1e9, 2) for k, v in flops.items()},
    }


def model_name(args: argparse.Namespace) -> str:
    """`--model`, or the deprecated positional NAME (with a note on stderr), or the default."""
    if args.positional_model is None:
        return args.model or DEFAULT_MODEL
    if args.model is not None:
        raise FastInstError(f"model given twice ({args.positional_model!r} and --model {args.model!r}); use --model")
    print(
        f"note: `fastinst info {args.positional_model}` is deprecated; use `fastinst info --model "
        f"{args.positional_model}`",
        file=sys.stderr,
    )
    return args.positional_model


def run(args: argparse.Namespace) -> int:
    from ..config import PUBLISHED

    name = model_name(args)
    names = PUBLISHED if name == "all" else [name]
    for name in names:
        info = model_info(name, tuple(args.size) if args.size else None)
        if args.json:
            print(json.dumps(info))
            continue
        h, w = info["size"]
        print(f"{info['model']}  (input {h}x{w})")
        print(f"  config {info['config']}")
        print(f"  {'part':<15}{'params':>14}{'GFLOPs':>10}")
        for part in ("backbone", "pixel_decoder", "decoder", "postprocess", "total"):
            p = info["params"].get(part)
            print(f"  {part:<15}{(f'{p:,}' if p is not None else '-'):>14}{info['gflops'][part]:>10.2f}")
    return 0
