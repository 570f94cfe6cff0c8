"""Write any loaded `InstanceDataset` (COCO, YOLO, Cityscapes, ADE20K, labelme, instance label images) as one COCO
instances json.

Image `file_name`s are written relative to the json's folder, so `load_dataset(out_path)` finds the images again and
gives back the same masks. Segmentations are kept as loaded (polygons or RLE) unless `rle=True`.

`convert_dataset` is `fastinst convert --data`: it refuses an output that would replace an input annotation file or
land inside a labelme folder it reads (where the next load would meet it), and writes images that a labelme file only
embeds (`imageData`) to `<output folder>/<output stem>_images/` before the json. `convert_label_images` is
`fastinst convert --masks`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DatasetError
from ..files import check_output, same_file, write_json
from .core import InstanceDataset
from .masks import json_rle
from .registry import dataset_path, detect_layout, load_dataset, official_dataset


def to_coco_json(dataset: InstanceDataset, out_path: str | os.PathLike, *, rle: bool = False) -> Path:
    """Write `dataset.coco` to `out_path` (atomically); with `rle=True` polygons are stored as compressed RLE."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    here = out.parent.resolve()
    images = []
    for im in dataset.coco["images"]:
        path = (dataset.image_root / im["file_name"]).resolve()
        images.append(dict(im, file_name=Path(os.path.relpath(path, here)).as_posix()))
    annotations = dataset.coco["annotations"]
    if rle:
        sizes = {im["id"]: (im["height"], im["width"]) for im in images}
        annotations = [dict(a, segmentation=json_rle(a["segmentation"], *sizes[a["image_id"]])) for a in annotations]
    data = {
        "info": dataset.coco.get("info", {}),
        "licenses": dataset.coco.get("licenses", []),
        "images": images,
        "annotations": annotations,
        "categories": dataset.coco["categories"],
    }
    return write_json(out, data)


def embedded_images_dir(output: str | os.PathLike) -> Path:
    """Where `convert_dataset` writes images that labelme files only embed: `<output folder>/<output stem>_images`."""
    out = Path(output)
    return out.parent / f"{out.stem}_images"


def convert_dataset(
    spec: str | os.PathLike, split: str, output: str | os.PathLike, *, rle: bool = False
) -> tuple[InstanceDataset, Path, list[Path]]:
    """Load split `split` of `spec` (anything `load_dataset` takes) and write it to `output` as a COCO json.
    -> (the dataset, the json path, the embedded labelme images written). The output is checked before any work."""
    out = Path(output)
    official = official_dataset(spec)  # `coco_2017_val` and the other official names, as load_dataset takes them
    if official is not None:
        spec, split = official[0], official[1] or split
    path = dataset_path(spec)
    check_output(out, inputs=[path], kind="file")
    layout = detect_layout(path)[0] if path.is_dir() else "file"
    if layout == "labelme":
        _refuse_inside(out, path)
        from .labelme import read_labelme, write_embedded_images

        dataset, pending = read_labelme(path, split, embedded_dir=embedded_images_dir(out))
        written = write_embedded_images(pending)
    else:
        for item in _annotation_files(path, layout):
            if same_file(out, item):
                raise DatasetError(f"{out}: --output is the input annotation file {item}; choose another path")
        dataset, written = load_dataset(path, split), []
    return dataset, to_coco_json(dataset, out, rle=rle), written


def convert_label_images(
    masks: str | os.PathLike,
    images: str | os.PathLike,
    output: str | os.PathLike,
    *,
    class_name: str | None = None,
    class_masks: str | os.PathLike | None = None,
    names: Sequence[str] | str | os.PathLike | None = None,
) -> tuple[InstanceDataset, Path]:
    """Instance label images (see `fastinst.data.label_images`) -> a COCO json at `output` (RLE masks)."""
    inputs: list[str | os.PathLike] = [masks, images]
    if class_masks is not None:
        inputs.append(class_masks)
    if isinstance(names, (str, os.PathLike)):
        inputs.append(names)
    out = check_output(output, inputs=inputs, kind="file")
    from .label_images import load_label_images

    dataset = load_label_images(masks, images, class_name=class_name, class_masks=class_masks, names=names)
    return dataset, to_coco_json(dataset, out)


def _refuse_inside(out: Path, folder: Path) -> None:
    here, root = out.resolve(), folder.resolve()
    if root == here or root in here.parents:
        raise DatasetError(
            f"{out}: --output is inside the labelme folder {folder} being converted, where the next load would read "
            "it as an annotation file; write it elsewhere (for example next to the folder)"
        )


def _annotation_files(path: Path, layout: str) -> list[Path]:
    """The annotation files a dataset folder may be read from (the ones an output must not replace)."""
    if layout == "file":
        return [path]
    if layout == "coco":
        return sorted((path / "annotations").glob("instances_*.json"))
    if layout == "ade20k":
        bases = [path / "ADEChallengeData2016", path]
        return sorted(f for b in bases for f in b.glob("ade20k_instance_*.json"))
    return []
