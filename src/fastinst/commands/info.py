"""`fastinst info MODEL [--size H W]`: parameters (total and per part) and GFLOPs (fvcore convention)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "info",
        help="parameters and GFLOPs of a variant",
        description="Parameters per part and GFLOPs (one multiply-add = one flop, DCN included).",
    )
    p.add_argument("model", help="variant name or alias, e.g. fastinst-d1-r50 (use 'all' for every published one)")
    p.add_argument(
        "--size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="input height and width (default: the variant's test size on a 4:3 image)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def model_info(name: str, size: tuple[int, int] | None = None) -> dict:
    import torch

    from .. import build_model
    from ..config import get_config
    from ..flops import count_flops
    from ..model.preprocess import resize_shape

    cfg = get_config(name)
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
    torch.set_grad_enabled(False)
    flops = count_flops(model, *size)
    return {
        "model": cfg.name,
        "size": list(size),
        "params": params,
        "gflops": {k: round(v / 1e9, 2) for k, v in flops.items()},
    }


def run(args: argparse.Namespace) -> int:
    from ..config import PUBLISHED

    names = PUBLISHED if args.model == "all" else [args.model]
    for name in names:
        info = model_info(name, tuple(args.size) if args.size else None)
        if args.json:
            print(json.dumps(info))
            continue
        h, w = info["size"]
        print(f"{info['model']}  (input {h}x{w})")
        print(f"  {'part':<15}{'params':>14}{'GFLOPs':>10}")
        for part in ("backbone", "pixel_decoder", "decoder", "postprocess", "total"):
            p = info["params"].get(part)
            print(f"  {part:<15}{(f'{p:,}' if p is not None else '-'):>14}{info['gflops'][part]:>10.2f}")
    return 0
