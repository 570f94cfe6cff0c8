"""A seeded mutator of annotation files and the realistic files it starts from (tests/data/test_fuzz_readers.py).

`Mutator(seed)` deep-copies a JSON/YAML-shaped document (dicts, lists, numbers, strings) and applies one to four
mutations at random places: a key or element deleted; a value replaced by one of `SPECIALS` (None, booleans, 0, -1,
2**31, 10**30, 1e30, NaN, ±inf, empty/odd strings, empty and nested containers); a number negated, scaled by 1e9 or
1e30, made fractional, turned into a string; a string emptied, cut, corrupted, turned into a number; a list emptied,
cut, doubled, wrapped; a dict given an unknown key or turned into a list; a value copied from elsewhere in the
document (duplicate ids, a polygon where a number goes). Each case is a pure function of its seed, so a failing case
is replayed from its number. `mutate_text` does the same to text files (YOLO labels) and `mutate_bytes` to a
serialised file (cut, BOM, invalid UTF-8, 100,000-deep nesting, a 5,000-digit number).

The base files (`write_coco_base`, `write_labelme_base`, `write_yolo_base`, `coco_results`) are small but use every
form their format allows: COCO polygons (several parts, one reaching outside its image), RLE with a compressed string
and with a counts list, crowd regions, bbox-only entries, info/licenses; labelme polygon, rectangle, circle, mask,
line and point shapes, group ids, `__ignore__` and `_background_`, files with and without `imageData`; Ultralytics
data.yaml with list and mapping forms and normalised polygon labels.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from makers import box_mask, box_polygon, rle, write_image
from PIL import Image

NAN, INF = float("nan"), float("inf")

SPECIALS: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    -7,
    2**31,
    2**63,
    10**30,
    0.5,
    -0.5,
    1e9,
    1e30,
    -1e30,
    1e308,
    NAN,
    INF,
    -INF,
    "",
    "a",
    "7",
    "1e30",
    "NaN",
    "../x",
    "/",
    "a\x00b",
    "é\u202e名",
    "x" * 300,
    [],
    {},
    [[]],
    [{}],
    {"a": []},
    [1, 2, 3, 4],
    [[1e30, 1e30, -1e30, 1e30, 5, 5]],
    {"size": [32, 40], "counts": "0"},
    {"size": [10**9, 10**9], "counts": [0, 10**18]},
]

# replacements of a token of a label file ("\udcff" is written as bytes that are not UTF-8)
TOKENS = ["\udcff", "nan", "inf", "-inf", "-1", "1e30", "1e9", "abc", "", "0x10", "1_000", "\u0663", "1e-400", "2"]
TOKENS += ["0.5", "-0.5", "1.0000001", "99999999999999999999", "None", "[]", "\x00"]


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in `doc` (the root excluded) as a tuple of keys/indices."""
    out = []
    if isinstance(doc, dict):
        items: Any = doc.items()
    elif isinstance(doc, list):
        items = enumerate(doc)
    else:
        return out
    for k, v in items:
        here = (*prefix, k)
        out.append(here)
        out += paths(v, here)
    return out


def get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


class Mutator:
    """Seeded mutations of documents and text; `log` records what was done (for the failure message)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.log: list[str] = []

    def count(self) -> int:
        r = self.rng.random()
        return 1 if r < 0.6 else 2 if r < 0.85 else self.rng.randint(3, 4)

    def mutate(self, doc: Any, n: int | None = None) -> Any:
        doc = copy.deepcopy(doc)
        for _ in range(n or self.count()):
            places = paths(doc)
            if not places:
                break
            where = self._walk(doc) if self.rng.random() < 0.5 else self.rng.choice(places)
            self._apply(doc, where, places)
        return doc

    def _walk(self, doc: Any) -> tuple:
        """A place chosen by a random descent (stopping early with probability 0.3 at each container): structural
        keys near the root are picked as often as the many numbers of the polygons."""
        path: tuple = ()
        node = doc
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
            if not keys or (path and self.rng.random() < 0.3):
                return path
            k = self.rng.choice(keys)
            path, node = (*path, k), node[k]

    def _apply(self, doc: Any, where: tuple, places: list[tuple]) -> None:
        parent, key = get(doc, where[:-1]), where[-1]
        value = parent[key]
        r = self.rng.random()
        if r < 0.15:
            del parent[key]
            self.log.append(f"delete {list(where)}")
            return
        if r < 0.45:
            new = copy.deepcopy(self.rng.choice(SPECIALS))
        elif r < 0.55:
            new = copy.deepcopy(get(doc, self.rng.choice(places)))  # a value from elsewhere in the document
        else:
            new = self._change(value)
        parent[key] = new
        self.log.append(f"set {list(where)} = {_short(new)}")

    def _change(self, v: Any) -> Any:
        rng = self.rng
        if isinstance(v, bool):
            return rng.choice([not v, int(v), str(v).lower(), None])
        if isinstance(v, (int, float)):
            return rng.choice(
                [-v, v * 10**9 if isinstance(v, int) else v * 1e9, v * 1e30, v + 0.5, str(v), [v], NAN, -INF, 0, 2**31]
            )
        if isinstance(v, str):
            if not v:
                return rng.choice([" ", 0, None])
            k = rng.randrange(len(v))
            choices = [v[:k], v[:k] + "#" + v[k + 1 :], v + v, v + "\x00", len(v), v.upper(), f"{v}/../../x", [v]]
            if v.isdigit():
                choices.append(int(v))
            return rng.choice(choices)
        if isinstance(v, list):
            if not v:
                return rng.choice([[None], [[]], {}, ""])
            return rng.choice([[], v[:1], v + v, [v], v[::-1], {str(i): x for i, x in enumerate(v)}, len(v)])
        if isinstance(v, dict):
            extra = dict(v)
            extra["zz_unknown"] = rng.choice(SPECIALS)
            return rng.choice([{}, list(v.values()), extra, [v]])
        return rng.choice(SPECIALS)

    def mutate_text(self, text: str) -> str:
        """A label file's text with one to three token- or line-level changes."""
        lines = text.splitlines()
        for _ in range(self.count()):
            r = self.rng.random()
            if not lines or r < 0.05:
                lines = [self.rng.choice(["", "\x00\x01", "0 0.1 0.1 0.2"])]
                self.log.append(f"text -> {lines[0]!r}")
                continue
            i = self.rng.randrange(len(lines))
            tokens = lines[i].split()
            if r < 0.15:
                lines.insert(i, lines[i])
                self.log.append(f"line {i} doubled")
            elif r < 0.25:
                del lines[i]
                self.log.append(f"line {i} deleted")
            elif r < 0.35 and tokens:
                del tokens[self.rng.randrange(len(tokens))]
                lines[i] = " ".join(tokens)
                self.log.append(f"line {i} lost a token")
            elif tokens:
                j = self.rng.randrange(len(tokens))
                tokens[j] = self.rng.choice(TOKENS)
                lines[i] = " ".join(tokens)
                self.log.append(f"line {i} token {j} = {tokens[j]!r}")
        return "\n".join(lines) + self.rng.choice(["\n", "", "\r\n"])

    def mutate_bytes(self, data: bytes) -> bytes:
        """A serialised file broken as files are broken: cut, a BOM, bytes that are not UTF-8, absurd nesting, a
        number too long to parse."""
        kind = self.rng.randrange(5)
        self.log.append(f"bytes: {['cut', 'bom', 'not utf-8', 'deep nesting', 'huge number'][kind]}")
        if kind == 0:
            return data[: self.rng.randrange(max(1, len(data)))]
        if kind == 1:
            return b"\xef\xbb\xbf" + data
        if kind == 2:
            k = self.rng.randrange(max(1, len(data)))
            return data[:k] + b"\xff\xfe\xc3" + data[k:]
        if kind == 3:
            return b"[" * 100_000 + b"]" * 100_000
        digits = b"7" * 5000
        k = data.find(b": 1")
        return data[: k + 2] + digits + data[k + 3 :] if k >= 0 else digits


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------------------------------
# Base files
# ---------------------------------------------------------------------------------------------------------------------

# (file name, height, width) of the images every COCO base file refers to
COCO_IMAGES = [("a.jpg", 32, 40), ("b.png", 36, 48), ("sub/c.jpg", 30, 30)]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """A bool mask as COCO's uncompressed RLE (`counts` a list of run lengths, column-major), as crowd regions of
    COCO's own files are written."""
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = [0, *change.tolist(), len(flat)]
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": list(mask.shape), "counts": runs}


def coco_base() -> dict:
    """A COCO instances dict on `COCO_IMAGES`: polygons (one in two parts, one reaching outside its image), RLE as a
    compressed string and as a counts list, two crowd regions, a bbox-only entry, info and licenses."""
    (_, h1, w1), (_, h2, w2), (_, h3, w3) = COCO_IMAGES
    crowd = box_mask(30, 20, 44, 34, h2, w2)
    return {
        "info": {"description": "fuzz base", "version": "1.0", "year": 2024},
        "licenses": [{"id": 1, "name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"}],
        "images": [
            {"id": 1, "file_name": COCO_IMAGES[0][0], "height": h1, "width": w1, "license": 1},
            {"id": 2, "file_name": COCO_IMAGES[1][0], "height": h2, "width": w2, "license": 1},
            {"id": 5, "file_name": COCO_IMAGES[2][0], "height": h3, "width": w3},
        ],
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
            {"id": 7, "name": "dog", "supercategory": "animal"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [box_polygon(2, 2, 12, 10)], "area": 80.0,
             "bbox": [2, 2, 10, 8], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3,
             "segmentation": [[14, 4, 30, 4, 30, 20, 14, 20], [32.5, 22, 38, 22, 35, 30.5]], "area": 270.5,
             "bbox": [14, 4, 24, 26.5], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 7, "segmentation": rle(box_mask(4, 6, 20, 18, h2, w2)),
             "area": 192.0, "bbox": [4, 6, 16, 12], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "segmentation": uncompressed_rle(crowd),
             "area": float(crowd.sum()), "bbox": [30, 20, 14, 14], "iscrowd": 1},
            {"id": 5, "image_id": 5, "category_id": 3, "segmentation": [[-3, 5, 20, 2, 34, 18, 10, 31]],
             "area": 400.0, "bbox": [0, 2, 30, 28], "iscrowd": 0},
            {"id": 6, "image_id": 5, "category_id": 7, "segmentation": rle(box_mask(0, 0, 6, 6, h3, w3)),
             "area": 36.0, "bbox": [0, 0, 6, 6], "iscrowd": 1},
            {"id": 7, "image_id": 2, "category_id": 3, "segmentation": [], "area": 20.0, "bbox": [1, 1, 5, 4],
             "iscrowd": 0},
            {"id": 8, "image_id": 5, "category_id": 1, "segmentation": [box_polygon(12, 14, 26, 28)],
             "area": 196.0, "bbox": [12, 14, 14, 14], "iscrowd": 0},
        ],
    }  # fmt: skip


def write_coco_images(folder: Path) -> None:
    """The images of `COCO_IMAGES` under `folder`."""
    for n, (name, h, w) in enumerate(COCO_IMAGES):
        write_image(folder / name, h, w, seed=n)


def coco_results(base: dict) -> list[dict]:
    """COCO results for the images of `base`: compressed and list RLE, polygons, a file_name and a category_name
    entry."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in base["images"]}
    h1, w1 = sizes[1]
    h2, w2 = sizes[2]
    h5, w5 = sizes[5]
    return [
        {"image_id": 1, "category_id": 1, "segmentation": rle(box_mask(2, 2, 12, 10, h1, w1)), "score": 0.91},
        {"image_id": 1, "category_id": 3, "segmentation": rle(box_mask(14, 4, 30, 20, h1, w1)), "score": 0.8,
         "bbox": [14.0, 4.0, 16.0, 16.0]},
        {"image_id": 2, "category_id": 7, "segmentation": uncompressed_rle(box_mask(4, 6, 20, 18, h2, w2)),
         "score": 0.55},
        {"image_id": 5, "file_name": COCO_IMAGES[2][0], "category_id": 3, "category_name": "car",
         "segmentation": rle(box_mask(0, 2, 30, 28, h5, w5)), "score": 0.4},
        {"image_id": 5, "category_id": 1, "segmentation": rle(box_mask(12, 14, 26, 28, h5, w5)), "score": 0.05},
        {"image_id": 2, "category_id": 3, "segmentation": [[1, 1, 6, 1, 6, 5, 1, 5]], "score": 0.3},
    ]  # fmt: skip


# labelme: three files in one folder (see `labelme_base`)
LABELME_IMAGES = {"f1.jpg": (32, 40), "f3.png": (30, 36)}
EMBEDDED_SIZE = (36, 48)  # the image only f2.json holds, as imageData


def png_b64(arr: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _smooth(h: int, w: int, k: int) -> np.ndarray:
    """An RGB gradient image (compresses to little, unlike noise)."""
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * k % 256], -1).astype(np.uint8)


def _shape(label: str, points: list, kind: str | None = "polygon", group: int | None = None, **extra: Any) -> dict:
    s = {"label": label, "points": points, "group_id": group, "description": "", "shape_type": kind, "flags": {}}
    s.update(extra)
    return s


def labelme_base() -> list[dict]:
    """Three labelme 5.x files: f1 (image file beside it; polygon, rectangle, circle, a two-part group, a line and a
    point), f2 (image only as imageData; mask shapes, a polygon + mask group, `__ignore__`, `_background_`), f3
    (image file and imageData both; a shape without shape_type)."""
    embedded = png_b64(_smooth(*EMBEDDED_SIZE, 5))  # smooth pictures: a few hundred bytes of PNG
    small = np.zeros((8, 10), np.uint8)
    small[1:7, 2:9] = 255
    f3_pixels = _smooth(*LABELME_IMAGES["f3.png"], 6)

    def doc(shapes: list, image_path: str, image_data: str | None, size: tuple[int, int]) -> dict:
        return {
            "version": "5.5.0",
            "flags": {},
            "shapes": shapes,
            "imagePath": image_path,
            "imageData": image_data,
            "imageHeight": size[0],
            "imageWidth": size[1],
        }

    f1 = doc(
        [
            _shape("person", [[2, 2], [12, 2], [12, 10], [2, 10]]),
            _shape("car", [[14, 4], [30, 20]], "rectangle"),
            _shape("dog", [[30, 24], [34, 27]], "circle"),
            _shape("person", [[20, 22], [26, 22], [23, 30]], group=1),
            _shape("person", [[27, 22], [33, 22], [30, 30]], group=1),
            _shape("car", [[1, 30], [20, 28]], "line"),
            _shape("dog", [[5, 5]], "point"),
        ],
        "f1.jpg",
        None,
        LABELME_IMAGES["f1.jpg"],
    )
    f2 = doc(
        [
            _shape("car", [[4, 4], [13, 11]], "mask", mask=png_b64(small)),
            _shape("dog", [[20, 20], [30, 20], [30, 30]], group=2),
            _shape("dog", [[31, 20], [40, 27]], "mask", group=2, mask=png_b64(small)),
            _shape("__ignore__", [[40, 2], [46, 2], [46, 8], [40, 8]]),
            _shape("_background_", [[0, 0], [3, 3]], "rectangle"),
        ],
        "..\\elsewhere\\f2.png",
        embedded,
        EMBEDDED_SIZE,
    )
    f3 = doc(
        [_shape("car", [[3, 3], [20, 4], [18, 25], [4, 20]], None), _shape("person", [[22, 5], [30, 12]], "rectangle")],
        "f3.png",
        png_b64(f3_pixels),
        LABELME_IMAGES["f3.png"],
    )
    return [f1, f2, f3]


def write_labelme_images(folder: Path) -> None:
    for n, (name, (h, w)) in enumerate(LABELME_IMAGES.items()):
        write_image(folder / name, h, w, seed=10 + n)


LABELME_NAMES = ["f1.json", "f2.json", "f3.json"]


def write_labelme_docs(folder: Path, docs: Any) -> None:
    """A mutated list of labelme documents as files f1.json, f2.json, ... (a document that is no list gives one
    file)."""
    folder.mkdir(parents=True, exist_ok=True)
    items = docs if isinstance(docs, list) else [docs]
    for i, d in enumerate(items):
        name = LABELME_NAMES[i] if i < len(LABELME_NAMES) else f"extra{i}.json"
        (folder / name).write_text(json.dumps(d))


# Ultralytics YOLO: data.yaml + images/{train,val} + labels/{train,val}
YOLO_IMAGES = {"train/t1.jpg": (32, 40), "val/v1.jpg": (32, 40), "val/v2.png": (36, 30)}


def yolo_base() -> tuple[dict, dict[str, str]]:
    """(data.yaml as a dict, {label file relative path: text}) for the images of `YOLO_IMAGES`."""
    data = {"path": ".", "train": "images/train", "val": ["images/val"], "names": {0: "person", 1: "car"}, "nc": 2}
    labels = {
        "labels/train/t1.txt": "0 0.1 0.1 0.4 0.1 0.4 0.5 0.1 0.5\n",
        "labels/val/v1.txt": "0 0.05 0.0625 0.3 0.0625 0.3 0.3125\n1 0.35 0.125 0.75 0.125 0.75 0.625 0.35 0.625\n",
        "labels/val/v2.txt": "1 0.1 0.1 0.9 0.1 0.5 0.9\n0 0.5 0.5 0.2 0.2\n",
    }
    return data, labels


def write_yolo_images(folder: Path) -> None:
    for n, (name, (h, w)) in enumerate(YOLO_IMAGES.items()):
        write_image(folder / "images" / name, h, w, seed=20 + n)


def write_yolo_case(folder: Path, data: Any, labels: dict[str, str]) -> Path:
    """A YOLO dataset folder whose images are links to those in `folder.parent / "base"`; -> its data.yaml."""
    base = folder.parent / "base"
    for name in YOLO_IMAGES:
        target = folder / "images" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        link(base / "images" / name, target)
    for rel, text in labels.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode("utf-8", "surrogatepass"))
    out = folder / "data.yaml"
    out.write_text(yaml.safe_dump(data, allow_unicode=True))
    return out


def link(source: Path, target: Path) -> None:
    """A hard link (a copy where links are refused)."""
    try:
        target.hardlink_to(source)
    except OSError:
        target.write_bytes(source.read_bytes())


def finite_json(obj: Any) -> str:
    """`json.dumps` that also writes ints too long for `str()` (Python's 4300-digit limit) as 4300 digits."""
    try:
        return json.dumps(obj)
    except ValueError:
        return json.dumps(_cap_ints(obj))


def _cap_ints(obj: Any) -> Any:
    if isinstance(obj, int) and not isinstance(obj, bool) and obj.bit_length() > 14000:
        return int("9" * 4000)
    if isinstance(obj, dict):
        return {k: _cap_ints(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cap_ints(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------------------------------
# Cases and the worker that runs them
# ---------------------------------------------------------------------------------------------------------------------

WORKER = Path(__file__).resolve().parent / "fuzz_worker.py"
TRAIN = [
    "--model",
    "fastinst-demo",
    "--device",
    "cpu",
    "--val-split",
    "",
    "solver.ims_per_batch=2",
    "solver.max_iter=1",
    "solver.checkpoint_period=0",
]
BYTES_SHARE = 0.05  # of the JSON cases: broken as serialised bytes instead of as a document


@dataclass
class Case:
    """One mutant: its id, the command line, what was mutated, and the files it consists of (for a regression)."""

    id: str
    argv: list[str]
    log: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    cleanup: list[str] = field(default_factory=list)
    reader: str = ""
    command: str = "convert"
    options: dict[str, str] = field(default_factory=dict)  # split, and the file given as --data (labelme)


@dataclass
class Outcome:
    id: str
    verdict: str  # accepted | refused | crashed | killed
    rc: int | None = None
    stderr: str = ""
    crash: str | None = None
    seconds: float = 0.0


def _serialise(m: Mutator, doc: Any) -> bytes:
    data = finite_json(doc).encode("utf-8", "surrogatepass")
    return m.mutate_bytes(data) if m.rng.random() < BYTES_SHARE else data


class Campaign:
    """The base files under `root` and the mutants made from them, one folder per reader."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        write_coco_images(root / "coco" / "images")
        (root / "coco" / "gt").mkdir(parents=True)
        self.gt = root / "coco" / "gt" / "instances.json"
        self.gt.write_text(json.dumps(coco_base()))
        (root / "coco" / "mutants").mkdir()
        lm = root / "labelme" / "base"
        write_labelme_images(lm)
        write_labelme_docs(lm, labelme_base())
        write_yolo_images(root / "yolo" / "base")
        ydata, ylabels = yolo_base()
        self.yolo_base = write_yolo_case(root / "yolo" / "base", ydata, ylabels)
        (root / "results").mkdir()

    # -- warm-up jobs (unmutated files) --

    def warmup(self, command: str) -> list[str]:
        if command == "convert":
            return ["convert", "--data", str(self.gt), "--output", str(self.out / "warm.json")]
        if command == "eval":
            res = self.root / "results" / "base.json"
            res.write_text(json.dumps(coco_results(coco_base())))
            return ["eval", "--results", str(res), "--data", str(self.gt), "--output", str(self.out / "warm_eval")]
        return ["train", "--data", str(self.gt), "--output", str(self.out / "warm_train"), *TRAIN]

    # -- mutants --

    def _command(self, command: str, data: Path, name: str, split: str) -> tuple[list[str], list[str]]:
        if command == "train":
            out = self.out / f"{name}_train"
            return ["train", "--data", str(data), "--train-split", split, "--output", str(out), *TRAIN], [str(out)]
        out = self.out / f"{name}.json"
        return (
            ["convert", "--data", str(data), "--split", split, "--output", str(out)],
            [str(out), str(self.out / f"{name}_images")],
        )

    def coco(self, seed: int, command: str = "convert") -> Case:
        m = Mutator(seed)
        name = f"coco_{seed}"
        path = self.root / "coco" / "mutants" / f"{name}.json"
        raw = _serialise(m, m.mutate(coco_base()))
        path.write_bytes(raw)
        return self._coco_case(name, path, raw, command, m.log)

    def _coco_case(self, name: str, path: Path, raw: bytes, command: str, log: list[str]) -> Case:
        argv, cleanup = self._command(command, path, name, "train")
        return Case(name, argv, log, {"instances.json": raw}, cleanup, "coco", command)

    def labelme(self, seed: int, command: str = "convert") -> Case:
        m = Mutator(seed)
        name = f"labelme_{seed}"
        folder = self.root / "labelme" / name
        base = self.root / "labelme" / "base"
        folder.mkdir(parents=True)
        for image in LABELME_IMAGES:
            link(base / image, folder / image)
        docs = labelme_base()
        if m.rng.random() < 0.5:  # one file mutated (deeper changes per file), else the three as one document
            i = m.rng.randrange(len(docs))
            docs[i] = m.mutate(docs[i])
            m.log.append(f"(in {LABELME_NAMES[i]})")
        else:
            docs = m.mutate(docs)
        write_labelme_docs(folder, docs)
        jsons = sorted(folder.glob("*.json"))
        if jsons and m.rng.random() < BYTES_SHARE:
            broken = m.rng.choice(jsons)
            broken.write_bytes(m.mutate_bytes(broken.read_bytes()))
        options = {}
        if jsons and m.rng.random() < 0.2:  # one labelme file given as --data (embedded images go to the cache)
            options["data"] = m.rng.choice(jsons).name
            m.log.append(f"--data {options['data']}")
        return self._labelme_case(name, folder, command, m.log, options)

    def _labelme_case(self, name: str, folder: Path, command: str, log: list[str], options: dict) -> Case:
        files = {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))}
        data = folder / options["data"] if "data" in options else folder
        argv, cleanup = self._command(command, data, name, "train")
        return Case(name, argv, log, files, [*cleanup, str(folder)], "labelme", command, options)

    def yolo(self, seed: int, command: str = "convert") -> Case:
        m = Mutator(seed)
        name = f"yolo_{seed}"
        data, labels = yolo_base()
        r = m.rng.random()
        if r < 0.4:
            data = m.mutate(data)
        if r >= 0.3:
            key = m.rng.choice(sorted(labels))
            labels[key] = m.mutate_text(labels[key])
            m.log.append(f"(in {key})")
        yaml_path = write_yolo_case(self.root / "yolo" / name, data, labels)
        split = "val" if m.rng.random() < 0.7 else "train"
        return self._yolo_case(name, yaml_path, command, m.log, {"split": split})

    def _yolo_case(self, name: str, yaml_path: Path, command: str, log: list[str], options: dict) -> Case:
        folder = yaml_path.parent
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix in (".yaml", ".txt")
        }
        argv, cleanup = self._command(command, yaml_path, name, options.get("split", "val"))
        return Case(name, argv, log, files, [*cleanup, str(folder)], "yolo", command, options)

    def results(self, seed: int) -> Case:
        m = Mutator(seed)
        name = f"results_{seed}"
        path = self.root / "results" / f"{name}.json"
        raw = _serialise(m, m.mutate(coco_results(coco_base())))
        path.write_bytes(raw)
        return self._results_case(name, path, raw, m.log)

    def _results_case(self, name: str, path: Path, raw: bytes, log: list[str]) -> Case:
        out = self.out / f"{name}_eval"
        argv = ["eval", "--results", str(path), "--data", str(self.gt), "--output", str(out)]
        return Case(name, argv, log, {"results.json": raw}, [str(out), str(path)], "results", "eval")

    def replay(self, name: str, reader: str, command: str, files: dict[str, bytes], options: dict) -> Case:
        """A saved case (a regression file: `save_case`) laid out beside the base files, as its mutant was."""
        if reader == "coco":
            path = self.root / "coco" / "mutants" / f"{name}.json"
            path.write_bytes(files["instances.json"])
            return self._coco_case(name, path, files["instances.json"], command, [])
        if reader == "results":
            path = self.root / "results" / f"{name}.json"
            path.write_bytes(files["results.json"])
            return self._results_case(name, path, files["results.json"], [])
        folder = self.root / reader / name
        if reader == "labelme":
            for image in LABELME_IMAGES:
                folder.mkdir(parents=True, exist_ok=True)
                link(self.root / "labelme" / "base" / image, folder / image)
        else:
            for image in YOLO_IMAGES:
                (folder / "images" / image).parent.mkdir(parents=True, exist_ok=True)
                link(self.root / "yolo" / "base" / "images" / image, folder / "images" / image)
        for rel, raw in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(raw)
        if reader == "labelme":
            return self._labelme_case(name, folder, command, [], options)
        return self._yolo_case(name, folder / "data.yaml", command, [], options)


def save_case(case: Case, path: Path, found: str, expect: str | None) -> None:
    """A case as a regression file: what was found, the expected `error:` text (None: accepted) and its files (text,
    or base64 when not UTF-8)."""
    files: dict[str, dict[str, str]] = {}
    for rel, raw in case.files.items():
        try:
            files[rel] = {"text": raw.decode("utf-8")}
        except UnicodeDecodeError:
            files[rel] = {"base64": base64.b64encode(raw).decode("ascii")}
    doc = {
        "reader": case.reader,
        "command": case.command,
        "options": case.options,
        "found": found,
        "mutations": case.log,
        "expect": expect,
        "files": files,
    }
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def load_case(path: Path) -> dict:
    """A regression file as `Campaign.replay`'s arguments plus `found` and `expect`."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    files = {}
    for rel, item in doc["files"].items():
        files[rel] = item["text"].encode("utf-8") if "text" in item else base64.b64decode(item["base64"])
    return {**doc, "files": files, "name": path.stem}


def verdict(rc: int | None, stderr: str, crash: str | None) -> str:
    """accepted (exit 0), refused (exit 2 with exactly one `error:` line and no traceback), else crashed."""
    if crash is not None:
        return "crashed"
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if rc == 0 and not errors and "Traceback" not in stderr:
        return "accepted"
    if rc == 2 and len(errors) == 1 and "Traceback" not in stderr:
        return "refused"
    return "crashed"


def run_cases(
    cases: list[Case],
    warmup: list[str],
    workdir: Path,
    headroom_mb: int,
    per_case_s: float = 30.0,
    env: dict[str, str] | None = None,
) -> dict[str, Outcome]:
    """Run `cases` through fuzz_worker.py (restarted after a case that kills it) -> {case id: Outcome}."""
    import os
    import subprocess
    import sys

    workdir.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, Outcome] = {}
    remaining = list(cases)
    round_ = 0
    while remaining:
        round_ += 1
        jobs = workdir / f"jobs_{round_}.json"
        results = workdir / f"results_{round_}.jsonl"
        results.unlink(missing_ok=True)  # a workdir used before holds an earlier run's lines
        listed = [{"id": "warmup", "argv": warmup, "cleanup": []}]
        listed += [{"id": c.id, "argv": c.argv, "cleanup": c.cleanup} for c in remaining]
        jobs.write_text(json.dumps(listed))
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", **(env or {})}
        try:
            subprocess.run(
                [sys.executable, str(WORKER), str(jobs), str(results), str(headroom_mb), str(int(per_case_s))],
                env=full_env,
                timeout=120 + 5 * len(remaining),  # a backstop: the worker stops a case after per_case_s itself
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pass
        started: list[str] = []
        if results.is_file():
            for line in results.read_text().splitlines():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line being written when the process died
                if item.get("started"):
                    started.append(item["id"])
                    continue
                found = verdict(item["rc"], item["stderr"], item["crash"])
                if item["id"] != "warmup":
                    outcomes[item["id"]] = Outcome(
                        item["id"], found, item["rc"], item["stderr"], item["crash"], item["seconds"]
                    )
                elif found != "accepted":
                    raise AssertionError(f"the unmutated warm-up case failed: {item}")
        unfinished = [i for i in started if i not in outcomes and i != "warmup"]
        if unfinished:
            outcomes[unfinished[-1]] = Outcome(unfinished[-1], "killed")
        elif "warmup" in started and len(started) == 1 and not outcomes:
            raise AssertionError("the fuzz worker died during its warm-up")
        before = len(remaining)
        remaining = [c for c in remaining if c.id not in outcomes]
        if len(remaining) == before:
            raise AssertionError(f"the fuzz worker made no progress (round {round_})")
    return outcomes


def summary(outcomes: dict[str, Outcome]) -> dict[str, int]:
    counts = {"accepted": 0, "refused": 0, "crashed": 0, "killed": 0}
    for o in outcomes.values():
        counts[o.verdict] += 1
    return counts
