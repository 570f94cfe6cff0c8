"""Demo ablation: train `fastinst-demo` for a fixed number of iterations with one change, print val mask AP.

    python benchmarks/demo_ablation.py NAME ITERS [--image-size PX] [--threads T] [--test 224,256] [key=value ...]

Generates the synthetic shapes at `--image-size` (default: the demo's own) under `datasets/ablation-<size>`, trains
ITERS iterations (LR step at 80 %, as the demo) with the config overrides, evaluates the val split at each `--test`
short side and appends one JSON line (AP, AP50, AP75, APs, APm, per-class AP per test size, ms per iteration) to
`benchmarks/results/demo_ablation.jsonl`. Run two at a time with `--threads 1` on a 2-core machine: the AP at a fixed
iteration count does not depend on the speed; ms/iteration then compares runs of the same pair only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fastinst import build_model
from fastinst.commands.train import make_evaluator
from fastinst.config import apply_overrides, get_config
from fastinst.data.loader import build_train_loader
from fastinst.data.registry import load_dataset
from fastinst.data.synthetic import DEFAULT_IMAGE_SIZE, ensure_synthetic_coco
from fastinst.engine.trainer import Trainer

RESULTS = Path(__file__).parent / "results" / "demo_ablation.jsonl"


def evaluate(model, val, short: int) -> dict:
    """Val mask AP of `model` at test short side `short` (the `fastinst train` evaluator)."""
    model.cfg.input.min_size_test, model.cfg.input.max_size_test = short, max(short, model.cfg.input.max_size_test)
    m = make_evaluator(model.cfg, val)(model)
    row = {k: round(m[k], 1) for k in ("AP", "AP50", "AP75", "APs", "APm")}
    row["per_class"] = {k: round(v, 1) for k, v in m["per_class"].items()}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("iters", type=int)
    p.add_argument("--image-size", type=int, default=None, help="synthetic image size (default: the demo's)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--test", default="224", help="comma-separated test short sides")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.image_size or DEFAULT_IMAGE_SIZE
    data = Path("datasets") / f"ablation-{size}"
    ensure_synthetic_coco(data, image_size=size)
    train, val = load_dataset(data, split="train", filter_empty=True), load_dataset(data, split="val")
    cfg = apply_overrides(get_config("fastinst-demo"), args.overrides)
    cfg.model.num_classes = len(train.names)
    cfg.solver.max_iter, cfg.solver.steps, cfg.solver.checkpoint_period = args.iters, (int(args.iters * 0.8),), 0
    torch.manual_seed(cfg.solver.seed)
    model = build_model(cfg)
    out = Path("runs") / "ablation" / args.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    trainer = Trainer(
        cfg,
        model,
        lambda s: build_train_loader(train.records, cfg, cfg.solver.ims_per_batch, start_iter=s),
        out,
        progress=False,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    row = {
        "name": args.name,
        "iters": args.iters,
        "image_size": size,
        "overrides": args.overrides,
        "threads": torch.get_num_threads(),
        "ms_per_iter": round(seconds / args.iters * 1000, 1),
        "test": {s: evaluate(model, val, int(s)) for s in args.test.split(",")},
    }
    print(json.dumps(row))
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
