"""`fastinst convert`: a dataset split, or a folder of instance label images, as one COCO instances json.

`--data DATA --split val`: any layout `--data` takes (COCO, Ultralytics YOLO, Cityscapes, ADE20K, labelme folders)
becomes one json whose image paths are relative to it, ready for `fastinst train/eval --data out.json`; images that
labelme files only embed are written to `<output stem>_images/` beside it. `--masks DIR --images DIR`: instance label
images (one integer per instance: Cellpose, StarDist, Cell Tracking Challenge, VOC SegmentationObject) with one class
(`--class`) or a class map folder (`--class-masks`, names from `--classes`). See docs/datasets.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

_EXAMPLES = """examples:
  fastinst convert --data labelme_folder --split train --output data/train.json
  fastinst convert --masks cells/ --images cells/ --class cell --output cells.json
  fastinst convert --masks VOC2012/SegmentationObject --images VOC2012/JPEGImages \\
      --class-masks VOC2012/SegmentationClass --classes voc_names.txt --output voc.json"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="write a dataset split or instance label images as a COCO json",
        description=__doc__.split("\n\n")[0],
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data", help="dataset folder, json, YAML or short name (COCO, YOLO, Cityscapes, ADE20K, labelme)"
    )
    source.add_argument(
        "--masks", metavar="DIR", help="folder of instance label images (one integer per instance, 0 = background)"
    )
    p.add_argument("--split", default="val", help="split to convert, with --data (default val)")
    p.add_argument("--output", required=True, help="json file to write")
    p.add_argument("--rle", action="store_true", help="with --data: store polygons as compressed RLE too")
    p.add_argument("--images", metavar="DIR", help="with --masks: folder of the images (paired by file stem)")
    classes = p.add_mutually_exclusive_group()
    classes.add_argument(
        "--class", dest="class_name", metavar="NAME", help="with --masks: the one class name (default object)"
    )
    classes.add_argument(
        "--class-masks",
        metavar="DIR",
        help="with --masks: folder of class maps with the same stems (value k = class k, 0 background)",
    )
    p.add_argument(
        "--classes",
        metavar="NAMES",
        help="with --class-masks: class names for values 1, 2, ... (a text file, one a line, or a,b,c)",
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import FastInstError

    masks = getattr(args, "masks", None)
    if masks is None:
        for flag, value in (("--images", "images"), ("--class", "class_name"), ("--class-masks", "class_masks")):
            if getattr(args, value, None) is not None:
                raise FastInstError(f"{flag} goes with --masks, not --data")
        if getattr(args, "classes", None) is not None:
            raise FastInstError("--classes goes with --masks and --class-masks, not --data")
        from ..data.convert import convert_dataset

        dataset, path, written = convert_dataset(args.data, args.split, args.output, rle=args.rle)
        if written:
            print(f"wrote {len(written)} images embedded in the labelme files to {written[0].parent}")
    else:
        if not args.images:
            raise FastInstError("--masks needs --images (the folder of the images the label images belong to)")
        if args.classes is not None and args.class_masks is None:
            raise FastInstError("--classes needs --class-masks (the class maps whose values the names are for)")
        if args.class_masks is not None and args.classes is None:
            raise FastInstError("--class-masks needs --classes (a names file or a,b,c for the values 1, 2, ...)")
        if args.rle:
            raise FastInstError("--rle goes with --data (label images are always written as RLE)")
        from ..data.convert import convert_label_images

        names = _names(args.classes)
        dataset, path = convert_label_images(
            masks, args.images, args.output, class_name=args.class_name, class_masks=args.class_masks, names=names
        )
    coco = dataset.coco
    print(
        f"{dataset.name}: {len(coco['images'])} images, {len(coco['annotations'])} annotations, "
        f"{len(coco['categories'])} categories -> {path}"
    )
    return 0


def _names(value: str | None) -> list[str] | str | None:
    """`--classes`: an existing file's path, else a comma-separated list."""
    if value is None:
        return None
    if Path(value).is_file():
        return value
    if "," not in value and Path(value).suffix:
        from ..errors import FastInstError

        raise FastInstError(f"--classes {value}: no such file (give a names file or a comma-separated list a,b,c)")
    return [n.strip() for n in value.split(",") if n.strip()]
