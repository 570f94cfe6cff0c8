"""Instance label images (one integer per instance and pixel) as one COCO-shaped `InstanceDataset`.

Microscopy masks (Cellpose `*_masks.png`/`*_masks.tif`, StarDist, Cell Tracking Challenge `man_seg*.tif`) and Pascal
VOC `SegmentationObject/*.png` store instances this way. The rules (docs/datasets.md, "Instance label images"):

* Every distinct non-zero value of a label image is one instance. Label images are 8-bit (PIL modes `1`, `L`, `P`:
  palette PNGs give their palette indices), 16-bit (`I;16`, `I;16B`, ...) or 32-bit (`I`, and `F` when every value is
  a whole number) PNG/TIFF; colour (RGB) label images and multi-page stacks are a `DatasetError`.
* In 8-bit label images the value 255 is VOC's "void" (object borders, difficult regions): it is no instance and is
  left out of every mask (those pixels count as background). An 8-bit image holding only 0 and 255 is a binary mask,
  not instance labels, and is refused.
* Classes: one class (`class_name`, default "object", category id 1), or a class map: a folder of semantic label
  images with the same stems (VOC `SegmentationClass`: value k = class k, 0 background, 255 void), where each
  instance takes the most frequent class among its pixels (0 and void not counted; an instance without class pixels
  is skipped, mixed ones are counted in a note). `names` gives the class names, for values 1, 2, ...; a first name
  `background` (any case, or `_background_`, `__background__`) stands for value 0 and is skipped, so VOC's 21-name
  list and its 20 object names both work. Category ids are the class values.
* Pairing label image <-> image by file stem, also after removing one of the suffixes `_cp_masks`, `_masks`, `_mask`,
  `_labels`, `_label`, `_seg` or turning a `man_seg` prefix into `t` (CTC: `man_seg000.tif` <-> `t000.tif`). When the
  mask and image folders are the same (Cellpose), the files whose stems carry such a suffix or prefix are the labels.
  Label images without an image are one error listing them; images without a label image are left out with one note
  (an image without objects needs an all-zero label image: unlabelled is not the same as empty).
* A label image (or class map) whose size differs from its image's is a `DatasetError` naming both files and sizes.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import DatasetError, note
from .coco import from_coco
from .core import InstanceDataset, image_size, relative
from .images import IMAGE_EXTENSIONS, PIL_ERRORS, is_image_file
from .masks import rle_annotation

__all__ = ["SUFFIXES", "find_label_images", "label_key", "load_label_images", "read_label_image", "read_names"]

SUFFIXES = ("_cp_masks", "_masks", "_mask", "_labels", "_label", "_seg")
VOID = 255
BACKGROUND_NAMES = ("background", "_background_", "__background__")
_EIGHT_BIT = ("1", "L", "P")
_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

_ISSUES = {
    "mixed_class": "instances whose pixels carry several classes (majority class used)",
    "no_class": "skipped instances whose pixels carry no class in the class map",
}


def label_key(stem: str) -> str:
    """The image stem a label file's stem points to: without a known suffix, `man_seg` -> `t` (else unchanged)."""
    for suffix in SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    if stem.startswith("man_seg") and len(stem) > len("man_seg"):
        return "t" + stem[len("man_seg") :]
    return stem


def read_names(names: Sequence[str] | str | os.PathLike) -> dict[int, str]:
    """Class names -> {class value: name}: a list, or a text file with one name a line (empty lines skipped).
    Names are for values 1, 2, ...; a first name `background` (see the module docstring) is value 0 and is dropped."""
    if isinstance(names, (str, os.PathLike)):
        path = Path(names)
        try:
            items = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: cannot read the class names ({e})") from None
        source = str(path)
    else:
        items, source = [str(n).strip() for n in names], "class names"
    items = [n for n in items if n]
    if not items:
        raise DatasetError(f"{source}: no class names")
    start = 0 if items[0].lower() in BACKGROUND_NAMES else 1
    table = {value: name for value, name in enumerate(items, start) if value != 0}
    if not table:
        raise DatasetError(f"{source}: no class names besides background")
    if len(set(table.values())) != len(table):
        repeated = next(n for n, c in Counter(table.values()).items() if c > 1)
        raise DatasetError(f"{source}: class name {repeated!r} is listed twice")
    return table


def read_label_image(
    path: Path, expected: tuple[int, int, str] | None = None, kind: str = "label image"
) -> tuple[np.ndarray, bool]:
    """-> (int64 (H, W) label values, whether the file is 8-bit so that 255 is void). `DatasetError` for colour
    images, stacks, negative or non-integer values and unreadable files, and (`expected` = (height, width, what they
    are the size of)) for a file of another size, from its header before its pixels are decoded (`kind`: what the
    file is, in that message)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if expected is not None and im.size != (expected[1], expected[0]):
                h, w, other = expected
                raise DatasetError(f"{path}: {kind} is {im.size[0]}x{im.size[1]} but {other} is {w}x{h}")
            frames = int(getattr(im, "n_frames", 1))
            if frames > 1:
                raise DatasetError(
                    f"{path}: a {frames}-page stack; label images must be single 2-D images (one per image)"
                )
            mode = im.mode
            if mode not in (*_EIGHT_BIT, *_INTEGER_MODES, "F"):
                raise DatasetError(
                    f"{path}: a {mode} label image; instance label images need one integer per pixel (a gray "
                    "8/16/32-bit PNG or TIFF, or a palette PNG), colour-coded instances are not supported"
                )
            arr = np.asarray(im)
    except PIL_ERRORS as e:
        raise DatasetError(f"{path}: cannot read label image ({e})") from None
    if arr.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel label image, got shape {arr.shape}")
    if mode == "F":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise DatasetError(f"{path}: a float label image whose values are not all whole numbers")
    values = arr.astype(np.int64)
    if values.size and values.min() < 0:
        raise DatasetError(f"{path}: negative label value {int(values.min())}")
    return values, mode in _EIGHT_BIT


def _list(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _by_stem(files: list[Path], folder: Path, what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise DatasetError(f"{folder}: two {what} share the stem {f.stem!r} ({out[f.stem].name}, {f.name})")
        out[f.stem] = f
    return out


def _match(stem: str, table: dict[str, Path]) -> Path | None:
    if stem in table:
        return table[stem]
    return table.get(label_key(stem))


def _listing(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def load_label_images(
    masks: str | os.PathLike,
    images: str | os.PathLike,
    *,
    class_name: str | None = None,
    class_masks: str | os.PathLike | None = None,
    names: Sequence[str] | str | os.PathLike | None = None,
) -> InstanceDataset:
    """The label images in folder `masks` with their images in folder `images` as one dataset (rules: the module
    docstring). One class `class_name` (default "object"), or a class map folder `class_masks` with `names`."""
    mask_dir, image_dir = Path(masks), Path(images)
    if class_masks is not None and class_name is not None:
        raise DatasetError("give either one class name or a class map folder, not both")
    if class_masks is None and names is not None:
        raise DatasetError("class names need a class map folder (SegmentationClass-style images) to assign them")
    if class_masks is not None and names is None:
        raise DatasetError(f"{class_masks}: a class map needs the class names (name i for value i)")
    label_files = _list(mask_dir, "label image")
    image_files = _list(image_dir, "image")
    if mask_dir.resolve() == image_dir.resolve():  # Cellpose: x.png next to x_masks.png
        label_files = [f for f in label_files if label_key(f.stem) != f.stem]
        chosen = set(label_files)
        image_files = [f for f in image_files if f not in chosen]
    if not label_files:
        raise DatasetError(f"{mask_dir}: no label images")
    by_image = _by_stem(image_files, image_dir, "images")
    pairs: list[tuple[Path, Path]] = []
    orphans: list[Path] = []
    taken: dict[Path, Path] = {}
    for f in label_files:
        img = _match(f.stem, by_image)
        if img is None:
            orphans.append(f)
            continue
        if img in taken:
            raise DatasetError(f"{mask_dir}: {taken[img].name} and {f.name} both belong to the image {img.name}")
        taken[img] = f
        pairs.append((f, img))
    if orphans:
        raise DatasetError(
            f"{mask_dir}: {len(orphans)} label images have no image in {image_dir}: {_listing(orphans)} (paired by "
            f"file stem, also without a suffix {', '.join(SUFFIXES)} or with man_seg -> t)"
        )
    unlabelled = [f for f in image_files if f not in taken]
    if unlabelled:
        note(
            f"{image_dir}: {len(unlabelled)} images have no label image and are left out: {_listing(unlabelled)} "
            "(an image without objects needs an all-zero label image)"
        )
    class_files: dict[str, Path] = {}
    class_dir = Path(class_masks) if class_masks is not None else None
    if class_dir is not None:
        class_files = _by_stem(_list(class_dir, "class map"), class_dir, "class maps")
        missing = [f for f, _ in pairs if _match(f.stem, class_files) is None]
        if missing:
            raise DatasetError(f"{class_dir}: no class map for {len(missing)} label images: {_listing(missing)}")
    table = read_names(names) if names is not None else {1: class_name or "object"}
    issues: Counter[str] = Counter()
    images_out: list[dict] = []
    anns: list[dict] = []
    for image_id, (f, img) in enumerate(pairs, 1):
        h, w = image_size(img)
        labels, eight_bit = read_label_image(f, (h, w, f"its image {img}"))
        if labels.shape != (h, w):
            raise DatasetError(
                f"{f}: label image is {labels.shape[1]}x{labels.shape[0]} but its image {img} is {w}x{h}"
            )
        classes = None
        if class_dir is not None:
            cf = _match(f.stem, class_files)
            assert cf is not None
            classes, class_eight_bit = read_label_image(cf, (h, w, f"its label image {f}"), "class map")
            if classes.shape != (h, w):
                raise DatasetError(
                    f"{cf}: class map is {classes.shape[1]}x{classes.shape[0]} but its label image {f} is {w}x{h}"
                )
            if class_eight_bit:
                classes = np.where(classes == VOID, 0, classes)
        for value, mask in _instance_masks(labels, eight_bit, f):
            cid = 1
            if classes is not None:
                cid = _majority(classes[mask], issues)
                if cid == 0:
                    continue
                if cid not in table:
                    raise DatasetError(
                        f"{cf}: class value {cid} (instance {value} of {f.name}) has no name (names cover "
                        f"{min(table)}..{max(table)})"
                    )
            anns.append(rle_annotation(mask, len(anns) + 1, image_id, cid, 0))
        images_out.append({"id": image_id, "file_name": relative(img, image_dir), "height": h, "width": w})
    for kind, count in issues.items():
        note(f"{mask_dir}: {_ISSUES[kind]}: {count}")
    cats = [{"id": k, "name": n} for k, n in sorted(table.items())]
    ds = from_coco(
        {"images": images_out, "annotations": anns, "categories": cats},
        image_dir,
        mask_dir,
        root=mask_dir.parent,
        check_files=False,
    )
    ds.name = mask_dir.name
    return ds


def find_label_images(folder: Path, limit: int = 5) -> tuple[Path, Path | None] | None:
    """(label image folder, the folder of their images when one pairs with them) when `folder` or one of its
    sub-folders (two levels down at most) holds what `load_label_images` reads, else None: label files beside their
    images (Cellpose: `x_masks.png` next to `x.png`), or image files whose first `limit` are all single-channel
    integer images with background 0, a few distinct values and mostly equal neighbours. A guess for the error of
    `detect_layout` (which folder to give `fastinst convert --masks`); nothing here is trusted beyond that."""

    def order(d: Path) -> tuple[bool, Path]:  # a training split's folders first (the one to convert to train on)
        return not any(part.lower() in ("train", "training") for part in d.relative_to(folder).parts), d

    places = [folder]
    for depth in (1, 2):
        level = [d for p in places[:64] if len(p.parts) - len(folder.parts) == depth - 1 for d in _sub_folders(p)]
        places += sorted(level, key=order)
    for place in places[:64]:
        try:
            files = sorted(f for f in place.iterdir() if f.is_file() and is_image_file(f) and f.name[0] != ".")
        except OSError:
            continue
        if not files:
            continue
        stems = {f.stem for f in files}
        if any(label_key(f.stem) != f.stem and label_key(f.stem) in stems for f in files):
            return place, place
        verdicts = [_looks_like_labels(f) for f in files[:limit]]
        if all(v is not False for v in verdicts) and any(verdicts):
            return place, _image_folder(place, files[:limit])
    return None


def _sub_folders(folder: Path) -> list[Path]:
    try:
        return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        return []


def _looks_like_labels(path: Path) -> bool | None:
    """Whether a file looks like an instance label image (None: all background, which says nothing either way)."""
    try:
        values, eight_bit = read_label_image(path)
    except DatasetError:
        return False
    if values.size == 0 or values.shape[0] < 2 or values.shape[1] < 2:
        return False
    found = np.unique(values)
    if found[0] != 0:  # label images have background 0
        return False
    if len(found) == 1:
        return None
    if eight_bit and len(found) == 2 and found[1] == VOID:  # a binary mask, which convert --masks refuses
        return False
    equal = (np.count_nonzero(values[:, 1:] == values[:, :-1]) + np.count_nonzero(values[1:] == values[:-1])) / (
        values[:, 1:].size + values[1:].size
    )
    return bool(equal >= 0.9 and len(found) <= values.size // 16 + 1)


def _image_folder(masks: Path, labels: list[Path]) -> Path | None:
    """A folder beside `masks` (or beside its parent: CTC's `01` for `01_GT/SEG`) that holds an image for each of
    `labels` by the pairing rule of `load_label_images`; None when there is none."""
    around = [d for d in _sub_folders(masks.parent) if d != masks]
    if masks.parent != masks.parent.parent:
        around += [d for d in _sub_folders(masks.parent.parent) if d != masks.parent]
    extensions = sorted({e for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())})
    for candidate in around[:64]:
        if all(
            any((candidate / f"{stem}{ext}").is_file() for stem in {f.stem, label_key(f.stem)} for ext in extensions)
            for f in labels
        ):
            return candidate
    return None


def _instance_masks(labels: np.ndarray, eight_bit: bool, path: Path) -> Iterator[tuple[int, np.ndarray]]:
    """(value, bool (H, W) mask) for every instance value in increasing order (void excluded in 8-bit images), one at
    a time: an image with thousands of instances never holds more than one full-size mask."""
    flat = labels.ravel()
    keep = flat != 0
    if eight_bit:
        void = flat == VOID
        if void.any() and not (keep & ~void).any():
            raise DatasetError(
                f"{path}: holds only 0 and 255, a binary mask; instance label images need one integer per instance "
                "(and in 8-bit label images 255 is the void label)"
            )
        keep &= ~void
    where = np.flatnonzero(keep)
    if not len(where):
        return
    values = flat[where]
    order = np.argsort(values, kind="stable")
    uniq, starts = np.unique(values[order], return_index=True)
    bounds = [*starts[1:], len(order)]
    for value, a, b in zip(uniq.tolist(), starts.tolist(), bounds, strict=True):
        mask = np.zeros(labels.shape, bool)
        mask.ravel()[where[order[a:b]]] = True
        yield int(value), mask


def _majority(values: np.ndarray, issues: Counter) -> int:
    """The most frequent non-zero class value (ties: the smallest); 0 when there is none (counted)."""
    values = values[values != 0]
    if not len(values):
        issues["no_class"] += 1
        return 0
    classes, counts = np.unique(values, return_counts=True)
    if len(classes) > 1:
        issues["mixed_class"] += 1
    return int(classes[np.argmax(counts)])
