"""`fastinst eval`: COCO mask AP of a results json, or of a model run over a dataset split.

    fastinst eval --results predictions.json --data coco --split val
    fastinst eval --model fastinst-d1-r50 --weights model.pth --data coco [--max-images 50]

Prints pycocotools' 12-line table and writes `metrics.json`, `pr_curve_iou50.png` and `pr_curve_iou75.png` to
`--output` (default runs/eval); with `--model` also the raw predictions as `predictions.json`. Under torchrun the
images are split over the processes and rank 0 scores everything.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ..errors import FastInstError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="COCO mask AP of a results json or of a model on a dataset split",
        description=__doc__.split("\n\n")[0],
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--results", help="COCO results json (list of {image_id, category_id, segmentation, score})")
    src.add_argument("--model", help="variant name, alias or YAML config to run (needs --weights)")
    p.add_argument("--weights", help="checkpoint file for --model")
    p.add_argument(
        "--data",
        required=True,
        help="dataset: folder, COCO json, Ultralytics YAML or short name (coco, "
        "cityscapes, ade20k under $FASTINST_DATASETS); see docs/datasets.md",
    )
    p.add_argument("--split", default="val", help="dataset split (default val)")
    p.add_argument("--output", default="runs/eval", help="output folder (default runs/eval)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images of the split")


def _read_image(path: str):
    from ..data.images import read_image

    return read_image(path)


def predict_dataset(args: argparse.Namespace, dataset) -> tuple[list[dict], list[int]]:
    """Run `--model`/`--weights` over the split (this rank's share); -> (COCO results, image ids) of all ranks."""
    import torch
    from tqdm import tqdm

    import fastinst

    from .. import checkpoint
    from ..config import get_config
    from ..engine import distributed as dist_utils
    from ..engine.evaluator import COCOEvaluator

    if not args.weights:
        raise FastInstError("--model needs --weights PATH (a checkpoint file)")
    if not Path(args.weights).is_file():
        raise FastInstError(f"{args.weights}: weights file not found")
    rank, world, local = dist_utils.init_distributed(args.device)
    device = f"cuda:{local}" if args.device.startswith("cuda") and world > 1 else args.device
    cfg = get_config(args.model)
    cfg.model.num_classes = len(dataset.names)
    model = fastinst.build_model(cfg)
    checkpoint.load_checkpoint(model, args.weights)
    model.to(torch.device(device)).eval()
    records = dataset.records[: args.max_images] if args.max_images else dataset.records
    evaluator = COCOEvaluator(dataset.coco, dataset.category_ids)
    with torch.inference_mode():
        for rec in tqdm(records[rank::world], desc="eval", unit="img", disable=rank != 0):
            out = model.inference([_read_image(rec["file_name"])])[0]
            evaluator.process(rec["image_id"], out["masks"], out["scores"], out["labels"])
    evaluator.gather()
    return evaluator.results, sorted({r["image_id"] for r in records})


def run(args: argparse.Namespace) -> int:
    from ..data.datasets import load_dataset
    from ..engine import distributed as dist_utils
    from ..engine.evaluator import evaluate_results, write_report

    if args.max_images is not None and args.max_images < 1:
        raise FastInstError("--max-images must be at least 1")
    start = time.time()
    dataset = load_dataset(args.data, split=args.split)
    out = Path(args.output)
    results: str | list[dict]
    image_ids: list[int] | None
    if args.results:
        results, image_ids = str(args.results), None
    else:
        results, image_ids = predict_dataset(args, dataset)
        if not dist_utils.is_main():
            return 0
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".predictions.tmp.json"
        tmp.write_text(json.dumps(results), encoding="utf-8")
        os.replace(tmp, out / "predictions.json")
        if args.max_images is None:
            image_ids = None  # the whole split: score against every ground-truth image, as pycocotools does
    metrics = evaluate_results(results, dataset.coco, image_ids=image_ids)
    target = write_report(metrics, out)
    print(
        f"{dataset.name}: mask AP {metrics['AP']:.2f} (AP50 {metrics['AP50']:.2f}, AP75 {metrics['AP75']:.2f}) "
        f"in {time.time() - start:.0f} s; wrote {target} and the PR curves"
    )
    return 0
