"""Instance-segmentation datasets in five layouts, all loaded into one COCO-shaped `InstanceDataset`: the names and
the layouts.

`load_dataset(spec, split)` accepts a COCO folder or annotation json, an Ultralytics segmentation YAML, a Cityscapes
root, an ADE20K `ADEChallengeData2016` folder, a labelme folder or file, a short name (`coco`, `cityscapes`,
`ade20k`) or an official name (`coco_2017_val`, `OFFICIAL_NAMES`) looked up under `datasets_root()`; `detect_layout`
says which layout a folder has. Every reader (coco.py, yolo.py, cityscapes.py, ade20k.py, labelme.py) first builds a
COCO instances dict, which `coco.from_coco` checks and turns into records (see docs/DEVELOPING.md). This module
imports the readers; no reader imports it. The layouts are documented in docs/datasets.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DatasetError
from .ade20k import load_ade20k
from .cityscapes import load_cityscapes
from .coco import is_labelme_data, load_coco_data, load_coco_folder
from .core import InstanceDataset, has_instance
from .jsonfiles import read_json
from .label_images import find_label_images
from .labelme import find_labelme, load_labelme
from .yolo import load_yolo

SHORT_NAMES = {"coco": "coco", "cityscapes": "cityscapes", "ade20k": "ADEChallengeData2016"}


def datasets_root() -> Path:
    """Where short and official dataset names live: `$FASTINST_DATASETS`, else `$DETECTRON2_DATASETS` (the official
    repository's variable), else `./datasets`."""
    return Path(os.environ.get("FASTINST_DATASETS") or os.environ.get("DETECTRON2_DATASETS") or "datasets")


# The dataset names of the official configs (DATASETS.TRAIN / TEST) -> (folder under `datasets_root()`, split), in the
# layout of the official datasets/README.md: coco/{annotations,train2017,val2017}, ADEChallengeData2016 with the
# prepared ade20k_instance_{train,val}.json, cityscapes/{gtFine,leftImg8bit}.
OFFICIAL_NAMES: dict[str, tuple[str, str]] = {
    "coco_2017_train": ("coco", "train"),
    "coco_2017_val": ("coco", "val"),
    "ade20k_instance_train": ("ADEChallengeData2016", "train"),
    "ade20k_instance_val": ("ADEChallengeData2016", "val"),
    "cityscapes_fine_instance_seg_train": ("cityscapes", "train"),
    "cityscapes_fine_instance_seg_val": ("cityscapes", "val"),
}


def official_dataset(spec: str | os.PathLike) -> tuple[Path, str] | None:
    """(dataset folder, split) for an official dataset name (`coco_2017_val`), or None for anything else (an
    existing path wins over a name). `DatasetError` when the name's folder is missing under the datasets root."""
    name = str(spec)
    if name not in OFFICIAL_NAMES or Path(name).exists():
        return None
    folder, split = OFFICIAL_NAMES[name]
    path = datasets_root() / folder
    if not path.is_dir():
        raise DatasetError(
            f"{name}: expected its data in {path} (the official datasets/README.md layout, see docs/datasets.md); "
            "set $FASTINST_DATASETS or $DETECTRON2_DATASETS to the folder that holds it"
        )
    return path, split


def load_dataset(
    spec: str | os.PathLike,
    split: str = "val",
    *,
    filter_empty: bool = False,
    image_root: str | os.PathLike | None = None,
    ade_labels: str = "instance",
) -> InstanceDataset:
    """Load split `split` of the dataset `spec` (a folder, a .json / .yaml file or a short name).

    An official dataset name (`coco_2017_train`, see `OFFICIAL_NAMES`) names its split itself; `split` is then unused.
    `filter_empty` drops images without a non-crowd annotation (for training). `image_root` overrides where the
    images of a COCO json are. `ade_labels`: how to read the R channel of ADE20K instance PNGs: `"instance"` (the
    released data: instance-track class 1..100) or `"semantic"` (a 150-class scene-parsing id; non-thing ids ignored).
    """
    named = official_dataset(spec)  # an official name fixes its split: coco_2017_val is coco's val
    path, split = named if named is not None else (dataset_path(spec), split)
    root = Path(image_root) if image_root is not None else None
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            data = read_json(path)
            if is_labelme_data(data):  # one labelme file: a dataset of one image
                ds = load_labelme(path, split)
            else:
                ds = load_coco_data(path, data, image_root=root)
        elif suffix in (".yaml", ".yml"):
            ds = load_yolo(path, split, datasets_root=datasets_root())
        else:
            raise DatasetError(f"{path}: expected a COCO .json, an Ultralytics .yaml or a dataset folder")
    else:
        kind, base = detect_layout(path)
        if kind == "cityscapes":
            ds = load_cityscapes(base, split)
        elif kind == "ade20k":
            ds = load_ade20k(base, split, image_root=root, labels=ade_labels)
        elif kind == "coco":
            ds = load_coco_folder(base, split, image_root=root)
        elif kind == "labelme":
            ds = load_labelme(base, split)
        else:
            ds = load_yolo(base, split, datasets_root=datasets_root())
    if filter_empty:
        ds.records = [r for r in ds.records if has_instance(r)]
    return ds


def dataset_path(spec: str | os.PathLike) -> Path:
    """The file or folder `spec` names: an existing path, else a short name (or any name) under `datasets_root()`;
    `DatasetError` when neither exists."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    base = datasets_root()
    candidate = base / SHORT_NAMES.get(str(spec).lower(), str(spec))
    if candidate.exists():
        return candidate
    raise DatasetError(
        f"{spec}: no such file or folder (nor {candidate}); the short names "
        f"{', '.join(SHORT_NAMES)} are looked up under $FASTINST_DATASETS or $DETECTRON2_DATASETS (now {base})"
    )


def detect_layout(folder: Path) -> tuple[str, Path]:
    """-> (`cityscapes` | `ade20k` | `coco` | `yolo` | `labelme`, the folder or YAML file to load) for a dataset
    folder. A labelme folder: its json files (or those of its train/val sub-folders) have a `shapes` list."""
    if (folder / "gtFine").is_dir():
        return "cityscapes", folder
    for base in (folder / "ADEChallengeData2016", folder):
        if (base / "annotations_instance").is_dir() or any(base.glob("ade20k_instance_*.json")):
            return "ade20k", base
    if any((folder / "annotations").glob("instances_*.json")):
        return "coco", folder
    yamls = sorted(p for p in folder.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
    if len(yamls) == 1:
        return "yolo", yamls[0]
    if find_labelme(folder):
        return "labelme", folder
    found = find_label_images(folder)
    if found is not None:
        import shlex

        masks, images = (shlex.quote(str(f)) if f is not None else "IMAGES_DIR" for f in found)
        raise DatasetError(
            f"{folder}: not a dataset layout fastinst knows, but {masks} looks like instance label images (one "
            f"integer per instance): convert them first with `fastinst convert --masks {masks} --images {images} "
            '--output data.json` (optionally --class NAME), then use --data data.json (docs/datasets.md, "Instance '
            'label images")'
        )
    raise DatasetError(
        f"{folder}: not a dataset layout fastinst knows (COCO annotations/instances_*.json, "
        "Cityscapes gtFine/, ADE20K annotations_instance/, one Ultralytics .yaml or labelme *.json files); "
        "see docs/datasets.md"
    )
