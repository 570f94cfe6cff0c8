"""`fastinst convert --data DATA --split val --output out.json`: any supported dataset as a COCO instances json.

Ultralytics YOLO, Cityscapes and ADE20K splits (and COCO ones, re-validated) become one json whose image paths are
relative to it, ready for `fastinst train/eval --data out.json`.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="write a dataset split (YOLO, Cityscapes, ADE20K, COCO) as a COCO json",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--data", required=True, help="dataset folder, json, YAML or short name; see docs/datasets.md")
    p.add_argument("--split", default="val", help="split to convert (default val)")
    p.add_argument("--output", required=True, help="json file to write")
    p.add_argument("--rle", action="store_true", help="store polygons as compressed RLE too")


def run(args: argparse.Namespace) -> int:
    from ..data.convert import to_coco_json
    from ..data.datasets import load_dataset

    dataset = load_dataset(args.data, split=args.split)
    path = to_coco_json(dataset, args.output, rle=args.rle)
    coco = dataset.coco
    print(
        f"{dataset.name}: {len(coco['images'])} images, {len(coco['annotations'])} annotations, "
        f"{len(coco['categories'])} categories -> {path}"
    )
    return 0
