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


def run(args: argparse.Namespace) -> int:
    from ..engine.evaluation import evaluate_split

    if args.max_images is not None and args.max_images < 1:
        raise FastInstError("--max-images must be at least 1")
    evaluate_split(
        args.data,
        results=args.results,
        model=args.model,
        weights=args.weights,
        split=args.split,
        output=args.output,
        device=args.device,
        backend=args.backend,
        dtype=args.dtype,
        onnx=args.onnx,
        max_images=args.max_images,
        boundary=args.boundary,
    )
    return 0
