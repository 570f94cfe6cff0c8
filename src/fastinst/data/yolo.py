"""Ultralytics YOLO segmentation data (`load_yolo`): a YAML with `names`, `path` and the splits, `labels/` mirroring
`images/`, one polygon a line in coordinates normalised to [0, 1].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .coco import from_coco
from .core import InstanceDataset, image_size, is_dir, is_file, is_int, is_number, relative, shown
from .images import is_image_file
from .jsonfiles import first_line, read_text, read_yaml


def load_yolo(yaml_path: Path, split: str, *, datasets_root: Path | None = None) -> InstanceDataset:
    """Ultralytics segmentation data: `names`, `path`, `<split>` (folder, .txt list or a list of them) in a YAML.

    Labels sit in `labels/` mirroring `images/`; each line `cls x1 y1 x2 y2 ...` is one polygon in coordinates
    normalised to [0, 1]. Category ids are the class indices plus one (COCO files start at 1). A relative `path` is
    looked up next to the YAML, then in `datasets_root` when given (`load_dataset` gives its datasets root).
    """
    cfg = read_yaml(yaml_path)
    names = _yolo_names(cfg.get("names"), yaml_path)
    nc = cfg.get("nc")
    if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or nc != len(names)):
        raise DatasetError(f"{yaml_path}: 'nc: {nc}' disagrees with 'names', which lists {len(names)} classes")
    root = _yolo_root(cfg, yaml_path, datasets_root)
    entry = cfg.get(split)
    if entry is None:
        have = ", ".join(k for k in ("train", "val", "test") if cfg.get(k)) or "none"
        raise DatasetError(f"{yaml_path}: no '{split}' entry (splits: {have})")
    items = entry if isinstance(entry, list) else [entry]
    if not items or not all(isinstance(item, str) and item.strip() for item in items):
        raise DatasetError(
            f"{yaml_path}: '{split}' must name an image folder, a .txt list of images or a list of them, "
            f"got {shown(entry)}"
        )
    files = []
    for item in items:
        files += _yolo_images(root / item, yaml_path)
    if not files:
        raise DatasetError(f"{yaml_path}: split {split!r} holds no images")
    files = sorted(set(files))
    images: list[dict] = []
    anns: list[dict] = []
    for image_id, f in enumerate(files, 1):
        h, w = image_size(f)
        images.append({"id": image_id, "file_name": relative(f, root), "height": h, "width": w})
        for cls, coords in _yolo_labels(_label_path(f), names, yaml_path):
            seg = [] if len(coords) == 4 else [[v * (w if k % 2 == 0 else h) for k, v in enumerate(coords)]]
            anns.append(
                {"id": len(anns) + 1, "image_id": image_id, "category_id": cls + 1, "segmentation": seg, "iscrowd": 0}
            )
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names) if n is not None]
    ds = from_coco(
        {"images": images, "annotations": anns, "categories": cats}, root, yaml_path, root=root, check_files=False
    )
    ds.name = f"{yaml_path.stem}_{split}"
    return ds


# The most classes a dataset may have (`model.num_classes`' range in fastinst.config).
MAX_CLASSES = 1 << 20


def _yolo_names(names: Any, yaml_path: Path) -> list[str | None]:
    def name(value: Any) -> str:
        if isinstance(value, str) or is_number(value):
            return str(value)
        raise DatasetError(
            f"{yaml_path}: 'names' entries must be class names (strings), got {shown(value)} (quote a name YAML "
            "reads as something else, such as yes, no, null or a list)"
        )

    if isinstance(names, list) and names:
        if len(names) > MAX_CLASSES:
            raise DatasetError(f"{yaml_path}: 'names' lists {len(names)} classes, more than {MAX_CLASSES}")
        return [name(n) for n in names]
    if isinstance(names, dict) and names:
        table: dict[int, str] = {}
        for k, v in names.items():
            if is_int(k) or (isinstance(k, str) and k.strip().isdigit()):
                index = int(k)
            else:
                raise DatasetError(f"{yaml_path}: 'names' keys must be class indices, got {shown(k)}")
            if not 0 <= index < MAX_CLASSES:
                raise DatasetError(f"{yaml_path}: 'names' has the class index {index}, outside 0..{MAX_CLASSES - 1}")
            table[index] = name(v)
        return [table.get(i) for i in range(max(table) + 1)]
    raise DatasetError(f"{yaml_path}: 'names' must be a non-empty list or a {{index: name}} mapping")


def _yolo_root(cfg: dict, yaml_path: Path, datasets_root: Path | None) -> Path:
    path = cfg.get("path")
    if not path:
        return yaml_path.parent
    if not isinstance(path, str):
        raise DatasetError(f"{yaml_path}: 'path' must be a folder (a string), got {shown(path)}")
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    bases = [yaml_path.parent] if datasets_root is None else [yaml_path.parent, datasets_root]
    for base in bases:
        if is_dir(base / p):
            return base / p
    where = "next to the YAML" if datasets_root is None else f"next to the YAML and in {datasets_root}"
    raise DatasetError(f"{yaml_path}: path {path!r} is not a folder (looked {where})")


def _yolo_images(p: Path, yaml_path: Path) -> list[Path]:
    if is_dir(p):
        return [f for f in p.rglob("*") if is_image_file(f) and f.is_file()]
    if is_file(p) and p.suffix == ".txt":
        out = []
        for line in read_text(p).splitlines():
            line = line.strip()
            if line:
                f = Path(line) if Path(line).is_absolute() else p.parent / line
                if not is_file(f):
                    raise DatasetError(f"{p}: listed image {line} not found")
                out.append(f)
        return out
    raise DatasetError(f"{yaml_path}: {p} is neither an image folder nor a .txt list")


def _label_path(image: Path) -> Path:
    """`.../images/a/b.jpg` -> `.../labels/a/b.txt` (the last `images` folder in the path is swapped)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _yolo_labels(path: Path, names: list[str | None], yaml_path: Path) -> list[tuple[int, list[float]]]:
    if not path.is_file():
        return []  # an image without a label file has no objects
    num_classes = len(names)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({first_line(e)})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DatasetError(f"{path}:{n}: expected numbers 'cls x1 y1 x2 y2 ...', got {line.strip()!r}") from None
        cls, coords = values[0], values[1:]
        if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < num_classes:
            raise DatasetError(f"{path}:{n}: class {fields[0]} is not an index into the {num_classes} names")
        if names[int(cls)] is None:
            raise DatasetError(f"{path}:{n}: class {int(cls)} has no name in {yaml_path} ('names')")
        if len(coords) % 2:
            raise DatasetError(f"{path}:{n}: odd number of coordinates ({len(coords)}); expected 'cls x1 y1 x2 y2 ...'")
        if len(coords) != 4 and len(coords) < 6:
            raise DatasetError(f"{path}:{n}: a polygon needs at least 3 points, got {len(coords) // 2}")
        bad = [v for v in coords if not (-0.01 <= v <= 1.01)]  # a little slack for rounding, then clipped
        if bad:
            hint = "; these look like pixel coordinates" if max(abs(v) for v in bad) > 1.5 else ""
            raise DatasetError(
                f"{path}:{n}: coordinate {bad[0]:g} is outside 0..1 (YOLO labels are normalised to the image{hint})"
            )
        out.append((int(cls), [min(max(v, 0.0), 1.0) for v in coords]))
    return out
