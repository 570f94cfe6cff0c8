"""`fastinst eval`: COCO mask AP of a results json, or of a model run over a dataset split.

    fastinst eval --results predictions.json --data coco --split val
    fastinst eval --model fastinst-d1-r50 --weights model.pth --data coco [--max-images 50]

Prints pycocotools' 12-line table and writes `metrics.json`, `pr_curve_iou50.png` and `pr_curve_iou75.png` to
`--output` (default runs/eval); with `--model` also the raw predictions as `predictions.json`. Under torchrun the
images are split over the processes and rank 0 scores everything. `--boundary` adds boundary AP (a `"boundary"`
block); on Cityscapes data its own AP / AP50 is added too (a `"cityscapes"` block); see docs/evaluation.md.

Results entries that carry `file_name` (`fastinst predict --save-json` writes it) are matched to the split's images
by it and take their image ids (a note says how many changed); a file name the split lacks, an image id the split
lacks on an entry without file name, or an unknown category id is refused in one line (docs/datasets.md).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ..errors import FastInstError
from ._options import add_backend, add_device, add_dtype, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="COCO mask AP of a results json or of a model on a dataset split",
        description=__doc__.split("\n\n")[0],
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--results", help="COCO results json (list of {image_id, category_id, segmentation, score})")
    src.add_argument("--model", help="variant name, alias or YAML config to run (needs --weights or --onnx)")
    p.add_argument("--weights", help="checkpoint file for --model")
    p.add_argument(
        "--data",
        required=True,
        help="dataset: folder, COCO json, Ultralytics YAML or short name (coco, "
        "cityscapes, ade20k under $FASTINST_DATASETS); see docs/datasets.md",
    )
    p.add_argument("--split", default="val", help="dataset split (default val)")
    p.add_argument("--output", default="runs/eval", help="output folder (default runs/eval)")
    add_backend(p, "--model/--weights")
    add_device(p)
    add_dtype(
        p,
        "fp32",
        "precision of --model: fp32 (default) is the official network; the others run `fastinst "
        "predict`'s fast path to measure its accuracy",
    )
    p.add_argument("--max-images", type=positive_int, help="evaluate only the first N images of the split")
    p.add_argument(
        "--boundary",
        action="store_true",
        help="also boundary AP (Boundary IoU, dilation 0.02 of the image diagonal) beside mask AP; "
        "see docs/evaluation.md",
    )


def predict_dataset(args: argparse.Namespace, dataset) -> tuple[list[dict], list[int], list[int], dict]:
    """Run `--model`/`--weights` over the split (this rank's share); -> (COCO results, image ids) of all ranks, the
    category ids to score (the classes model and split share) and what ran (`run_info`)."""
    import torch

    from ..classes import match_model
    from ..engine import distributed as dist_utils
    from ..engine.evaluator import predict_dataset as run_over
    from ..engine.evaluator import warn_crowded_images
    from ..engine.predictor import Predictor, describe_run, run_info
    from ..errors import note
    from ..factory import load_backend, resolve_device

    if not args.weights and not args.onnx:
        raise FastInstError("--model needs --weights PATH (a checkpoint file) or --weights official")
    device = resolve_device("cpu" if args.backend != "torch" else args.device)
    _rank, world, local = dist_utils.init_distributed(device.type)
    if device.type == "cuda" and world > 1:
        device = resolve_device(f"cuda:{local}")
    # torch: the PyTorch model; an exported network: its runtime's detect, in its precision (OpenVINO: --dtype)
    model = load_backend(args.backend, args.model, args.weights, device, None, args.dtype, args.onnx)
    # the classes fit the split, before any image is run
    match = match_model(model, dataset, source=args.weights or args.onnx)
    for line in match.notes(dataset.name):
        note(line)
    cfg = getattr(model, "cfg", None)
    queries = int(cfg.model.num_queries) if cfg is not None else 100
    if queries < 100:  # more than 100 is said by the scoring itself (COCO AP's 100 detections)
        ids = [r["image_id"] for r in dataset.records[: args.max_images]] if args.max_images else None
        warn_crowded_images(dataset.coco, ids, queries, f"the model's {queries} queries")
    runner: Any = model  # fp32: the official network; else `fastinst predict`'s fast path in that precision
    info = run_info(model, str(getattr(model, "dtype", "fp32")), str(getattr(model, "dtype_reason", "")))
    if args.dtype != "fp32" and isinstance(model, torch.nn.Module):
        runner = Predictor(model, dtype=args.dtype)  # the same `detect`, its precision
        info = runner.run_info
    print(f"eval: {describe_run(info)}", flush=True)
    workers = min(4, os.cpu_count() or 1)  # decoding overlaps the network
    evaluator = run_over(runner, dataset, args.max_images, progress=True, num_workers=workers, category_ids=match.ids)
    return evaluator.results, sorted(set(evaluator.image_ids)), match.shared, info


def _run_record(results: str) -> dict:
    """The side file `fastinst predict` writes beside a results json (`predictions.run.json`), or {}."""
    from pathlib import Path

    from ..data.datasets import read_json

    side = Path(results).with_name(Path(results).stem + ".run.json")
    if not side.is_file():
        return {}
    data = read_json(side)
    return data if isinstance(data, dict) else {}


def run(args: argparse.Namespace) -> int:
    from ..data.datasets import load_dataset
    from ..engine import distributed as dist_utils
    from ..engine.cityscapes_eval import evaluate_cityscapes, is_cityscapes
    from ..engine.evaluator import evaluate_results, write_report
    from ..engine.predictor import describe_run
    from ..files import check_output, write_json

    if args.max_images is not None and args.max_images < 1:
        raise FastInstError("--max-images must be at least 1")
    start = time.time()
    inputs = [args.results] if args.results else []
    out = check_output(args.output, inputs=[*inputs, args.data], kind="dir")
    dataset = load_dataset(args.data, split=args.split)
    results: str | list[dict]
    image_ids: list[int] | None
    category_ids: list[int] | None = None
    classes: list[dict] | None = None
    if args.results:
        results, image_ids = str(args.results), None
        record = _run_record(results)
        info = record.get("run") if isinstance(record.get("run"), dict) else None
        if isinstance(record.get("classes"), list):
            classes = [c for c in record["classes"] if isinstance(c, dict) and {"id", "name"} <= c.keys()]
        if info:
            print(f"eval: {results} from {describe_run({k: str(v) for k, v in info.items()})}", flush=True)
    else:
        results, image_ids, category_ids, info = predict_dataset(args, dataset)
        if not dist_utils.is_main():
            return 0
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "predictions.json", results)
        if args.max_images is None:
            image_ids = None  # the whole split: score against every ground-truth image, as pycocotools does
    # entries with file_name (fastinst predict --save-json) are matched to the split's images by it, never by position
    metrics = evaluate_results(
        results,
        dataset.coco,
        image_ids=image_ids,
        image_root=dataset.image_root,
        boundary=args.boundary,
        category_ids=category_ids,
        classes=classes,
    )
    if info:
        metrics["run"] = info
    if is_cityscapes(dataset):  # Cityscapes' own AP (its instance PNGs, its rules) beside COCO AP
        metrics["cityscapes"] = evaluate_cityscapes(results, dataset, image_ids=image_ids)
    target = write_report(metrics, out)
    print(
        f"{dataset.name}: mask AP {metrics['AP']:.2f} (AP50 {metrics['AP50']:.2f}, AP75 {metrics['AP75']:.2f}) "
        f"in {time.time() - start:.0f} s; wrote {target} and the PR curves"
    )
    if "boundary" in metrics:
        m = metrics["boundary"]
        print(f"{dataset.name}: boundary AP {m['AP']:.2f} (AP50 {m['AP50']:.2f}, AP75 {m['AP75']:.2f})")
    if "cityscapes" in metrics:
        m = metrics["cityscapes"]
        print(f"{dataset.name}: Cityscapes AP {m['AP']:.2f} (AP50 {m['AP50']:.2f}) over the 8 instance classes")
    return 0
