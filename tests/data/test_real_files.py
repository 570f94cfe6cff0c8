"""Files as the real tools write them: labelme's own example layouts (its VOC-class instance example with
`__ignore__` regions, its tutorial file whose `imagePath` names the json itself), 16-bit colour TIFF/PNG (tifffile,
dcraw, OpenCV), StarDist/Cellpose instance label images given straight to `--data`, and a broken labelme mask."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastinst.data.convert import convert_dataset, convert_label_images
from fastinst.data.core import drop_unused_categories
from fastinst.data.images import read_image
from fastinst.data.labelme import read_labelme, write_embedded_images
from fastinst.data.registry import load_dataset
from fastinst.errors import DatasetError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from makers import box_polygon, decoded, polygon_mask, write_image, write_labelme

# labels.txt of labelme's examples/instance_segmentation: the specials first, then the 20 VOC classes
VOC_LABELS = [
    "__ignore__",
    "_background_",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv/monitor",
]


def _jpeg_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _labelme_shape(label: str, points: list, shape_type: str = "polygon", mask: str | None = None) -> dict:
    """One shape as labelme 5.x/6.x writes it (`mask` only for mask shapes)."""
    out = {
        "label": label,
        "points": [[float(x), float(y)] for x, y in points],
        "group_id": None,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
    }
    if mask is not None:
        out["mask"] = mask
    return out


def _corners(poly: list[float]) -> list[tuple[float, float]]:
    return list(zip(poly[0::2], poly[1::2], strict=True))


# -- 1. labelme __ignore__ regions do not make unused classes look used ----------------------------------------------


def _voc_example(tmp_path: Path) -> Path:
    """labelme's examples/instance_segmentation layout: labels.txt (22 lines) beside data_annotated/ whose files use
    person, bottle, chair, car, dog and bus, with an `__ignore__` polygon in two of them."""
    root = tmp_path / "instance_segmentation"
    root.mkdir()
    (root / "labels.txt").write_text("\n".join(VOC_LABELS) + "\n")
    data = root / "data_annotated"
    files = {
        "2011_000003": [("person", (2, 2, 10, 20)), ("bottle", (12, 4, 16, 14)), ("__ignore__", (20, 18, 38, 30))],
        "2011_000006": [("person", (4, 2, 14, 28)), ("chair", (18, 12, 30, 28)), ("car", (30, 2, 38, 10))],
        "2011_000025": [("dog", (2, 4, 18, 20)), ("bus", (20, 2, 38, 24)), ("__ignore__", (0, 24, 12, 31))],
    }
    for n, (stem, objects) in enumerate(files.items()):
        write_image(data / f"{stem}.jpg", seed=n)
        shapes = [_labelme_shape(label, _corners(box_polygon(*box))) for label, box in objects]
        write_labelme(data / f"{stem}.json", shapes, f"{stem}.jpg", h=32, w=40)
    return data


def test_labelme_ignore_regions_leave_unused_classes_out_of_training(tmp_path):
    data = _voc_example(tmp_path)
    used = ["bottle", "bus", "car", "chair", "dog", "person"]  # in labels.txt order
    ds = load_dataset(data, "train")
    assert len(ds.names) == 20  # the category list keeps every class of labels.txt (evaluation maps by id)
    crowd = [a for a in ds.coco["annotations"] if a["iscrowd"]]
    assert len(crowd) == 2 * len(used)  # each ignore region once per class drawn in the split, not per listed class
    assert {ds.names[ds.category_ids.index(a["category_id"])] for a in crowd} == set(used)
    dropped = drop_unused_categories(ds)  # what `fastinst train` does with its training split
    assert ds.names == used and len(dropped) == 14 and "aeroplane" in dropped
    assert [c["name"] for c in ds.coco["categories"]] == used
    kept_ids = {c["id"] for c in ds.coco["categories"]}
    assert all(a["category_id"] in kept_ids for a in ds.coco["annotations"])
    labels = sorted(ds.names[a["category_id"]] for r in ds.records for a in r["annotations"] if not a["iscrowd"])
    assert labels == sorted(["person", "bottle", "person", "chair", "car", "dog", "bus"])
    # the same data as a COCO json gives the same classes
    _, out, _ = convert_dataset(data, "train", tmp_path / "coco" / "train.json")
    coco = load_dataset(out)
    drop_unused_categories(coco)
    assert coco.names == used
    # the ignore regions themselves stay crowd regions of the used classes
    mask = polygon_mask(box_polygon(20, 18, 38, 30))
    first = next(r for r in coco.records if Path(r["file_name"]).stem == "2011_000003")
    crowds = [a for a in first["annotations"] if a["iscrowd"]]
    assert len(crowds) == len(used) and all(a["category_id"] in range(len(used)) for a in crowds)
    assert all(
        np.array_equal(m, mask) for a, m in zip(first["annotations"], decoded(first), strict=True) if a["iscrowd"]
    )


def test_coco_classes_with_only_crowd_regions_are_left_out(tmp_path):
    """A COCO json (as pycocotools/labelme2coco write them) whose category "bird" has only crowd regions."""
    write_image(tmp_path / "images" / "a.jpg")
    crowd = {"size": [32, 40], "counts": [0, 32 * 40]}  # an uncompressed RLE covering the image
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 32, "width": 40}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "bird"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [box_polygon(2, 2, 9, 9)], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": crowd, "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 3, "segmentation": crowd, "iscrowd": 1},
            {"id": 4, "image_id": 1, "category_id": 3, "segmentation": [box_polygon(12, 2, 20, 9)], "iscrowd": 0},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = load_dataset(tmp_path / "ann.json")
    assert drop_unused_categories(ds) == ["bird"]
    assert ds.names == ["cat", "dog"] and ds.category_ids == [1, 3]
    assert [(a["category_id"], a["iscrowd"]) for a in ds.records[0]["annotations"]] == [(0, 0), (1, 1), (1, 0)]
    assert [a["id"] for a in ds.coco["annotations"]] == [1, 3, 4]


# -- 2. labelme's tutorial file: imagePath names the json itself, the image is in imageData -------------------------


def _tutorial_file(folder: Path, picture: np.ndarray, image_path: str = "apc2016_obj3.json") -> Path:
    """labelme's examples/tutorial/apc2016_obj3.json as it is in labelme's repository: an early format (no version,
    shape_type or imageHeight; line/fill colours), `imagePath` naming the json itself, the JPEG in `imageData`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "apc2016_obj3.json"
    shape = {"label": "shelf", "line_color": None, "fill_color": None, "points": [[2.5, 3.0], [30.0, 4.0], [28, 26.5]]}
    data = {
        "shapes": [shape],
        "lineColor": [0, 255, 0, 128],
        "fillColor": [255, 0, 0, 128],
        "imagePath": image_path,
        "imageData": _jpeg_b64(picture),
    }
    path.write_text(json.dumps(data, indent=2))
    return path


def _picture(h: int = 32, w: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 6, yy * 7, (xx + yy) * 3], axis=2).astype(np.uint8)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The fastinst cache folder, in `tmp_path` (never the real home): where embedded labelme images are decoded."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FASTINST_CACHE", str(folder))
    return folder


def _embedded(path: Path) -> tuple[bytes, np.ndarray]:
    """(the bytes of the image embedded in a labelme file, the picture they decode to)."""
    raw = base64.b64decode(json.loads(path.read_text())["imageData"])
    return raw, np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


TUTORIAL_POLYGON = [2.5, 3.0, 30.0, 4.0, 28.0, 26.5]


@pytest.mark.parametrize("as_file", [False, True], ids=["folder", "json"])
def test_labelme_tutorial_file_loads_directly_from_its_image_data(tmp_path, cache, as_file):
    """labelme opens its tutorial file from `imageData`; so do training and evaluation, given the folder or the json:
    the image is decoded once into the cache (bytes unchanged) and the record names that file."""
    folder = tmp_path / "tutorial"
    path = _tutorial_file(folder, _picture())
    before = _files(folder)
    raw, picture = _embedded(path)
    ds = load_dataset(path if as_file else folder, "train")
    (record,) = ds.records
    image = Path(record["file_name"])
    assert image == cache / "labelme" / hashlib.sha256(raw).hexdigest()[:16] / "apc2016_obj3.jpg"
    assert image.read_bytes() == raw  # the bytes as they are
    assert np.array_equal(read_image(image), picture)
    assert (record["height"], record["width"]) == (32, 40)
    assert ds.names == ["shelf"]
    ((ann, mask),) = zip(record["annotations"], decoded(record), strict=True)
    assert ann["category_id"] == 0 and ann["iscrowd"] == 0
    assert np.array_equal(mask, polygon_mask(TUTORIAL_POLYGON))
    assert _files(folder) == before  # nothing written into the data folder
    assert [p.name for p in cache.rglob("*") if p.is_file()] == ["apc2016_obj3.jpg"]  # no temporary file left


def test_labelme_embedded_image_is_reused_from_the_cache_and_rewritten_when_changed(tmp_path, cache):
    folder = tmp_path / "tutorial"
    path = _tutorial_file(folder, _picture())
    raw, _ = _embedded(path)
    image = Path(load_dataset(folder).records[0]["file_name"])
    stamp = image.stat().st_mtime_ns, image.stat().st_ino
    assert Path(load_dataset(path).records[0]["file_name"]) == image
    assert (image.stat().st_mtime_ns, image.stat().st_ino) == stamp  # same bytes: reused, not written again
    image.write_bytes(raw[: len(raw) // 2])  # a damaged cached copy is replaced
    assert Path(load_dataset(folder).records[0]["file_name"]) == image and image.read_bytes() == raw
    # another picture under the same name goes to its own hash folder; the first copy stays
    other = tmp_path / "other"
    other_path = _tutorial_file(other, _picture()[::-1].copy())
    other_image = Path(load_dataset(other_path).records[0]["file_name"])
    assert other_image.name == image.name and other_image.parent != image.parent
    assert other_image.read_bytes() == _embedded(other_path)[0] and image.read_bytes() == raw


def test_labelme_embedded_png_with_mask_and_rectangle_shapes_as_one_json(tmp_path, cache):
    """labelme 5.x (imagePath naming a photo that is gone), the PNG in imageData, a rectangle and a mask shape."""
    picture = np.random.default_rng(3).integers(0, 255, (32, 40, 3), np.uint8)
    bitmap = np.zeros((10, 12), np.uint8)
    bitmap[2:8, 3:11] = 255
    shapes = [
        _labelme_shape("box", [(4, 5), (14, 20)], "rectangle"),
        _labelme_shape("blob", [(20, 10), (31, 19)], "mask", base64.b64encode(_png_bytes(bitmap)).decode("ascii")),
    ]
    path = tmp_path / "lm" / "shot.json"
    image_data = base64.b64encode(_png_bytes(picture)).decode("ascii")
    write_labelme(path, shapes, "../photos/shot.png", image_data, h=32, w=40)
    (record,) = load_dataset(path).records
    assert Path(record["file_name"]).name == "shot.png" and Path(record["file_name"]).is_relative_to(cache)
    assert np.array_equal(read_image(record["file_name"]), picture)
    blob = np.zeros((32, 40), bool)
    blob[12:18, 23:31] = True
    masks = dict(zip((a["category_id"] for a in record["annotations"]), decoded(record), strict=True))
    assert np.array_equal(masks[1], polygon_mask(box_polygon(4, 5, 14, 20)))  # "box" (sorted names: blob, box)
    assert np.array_equal(masks[0], blob)
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == ["shot.json"]


def test_labelme_unwritable_cache_is_one_line_naming_the_json_and_the_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be\n")
    monkeypatch.setenv("FASTINST_CACHE", str(blocker))
    folder = tmp_path / "tutorial"
    path = _tutorial_file(folder, _picture())
    raw, _ = _embedded(path)
    with pytest.raises(DatasetError) as e:
        load_dataset(folder)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: cannot write the image embedded in it")
    assert str(blocker / "labelme" / hashlib.sha256(raw).hexdigest()[:16]) in msg and "FASTINST_CACHE" in msg


def test_labelme_tutorial_file_converts_with_its_image_beside_the_output(tmp_path, cache):
    folder = tmp_path / "tutorial"
    path = _tutorial_file(folder, _picture())
    raw, picture = _embedded(path)
    ds, pending = read_labelme(folder, "val", embedded_dir=tmp_path / "out" / "images")
    assert [p.target.name for p in pending] == ["apc2016_obj3.jpg"]  # a JPEG, named as one (not .json)
    assert not cache.exists()  # with embedded_dir nothing is written while reading
    (written,) = write_embedded_images(pending)
    assert written.read_bytes() == raw  # the bytes as they are
    assert (ds.records[0]["height"], ds.records[0]["width"]) == (32, 40)
    assert read_image(written).shape == (32, 40, 3)
    (ann,) = ds.records[0]["annotations"]
    assert ds.names == ["shelf"] and ann["iscrowd"] == 0
    # convert end to end, then train/eval on the json
    _, out, files = convert_dataset(folder, "val", tmp_path / "conv" / "tutorial.json")
    assert [f.name for f in files] == ["apc2016_obj3.jpg"]
    conv = load_dataset(out)
    assert np.array_equal(read_image(conv.records[0]["file_name"]), picture)


def test_labelme_tutorial_folder_with_its_jpeg_beside_the_json(tmp_path, cache):
    """The tutorial folder also holds apc2016_obj3.jpg: that file is the image."""
    folder = tmp_path / "tutorial"
    _tutorial_file(folder, _picture())
    write_image(folder / "apc2016_obj3.jpg")
    ds = load_dataset(folder)
    assert Path(ds.records[0]["file_name"]) == folder / "apc2016_obj3.jpg"
    assert not cache.exists()


@pytest.mark.parametrize("image_path", ["notes.txt", "broken.jpg", "gone.jpg"])
def test_labelme_image_path_not_an_image_falls_back_to_image_data(tmp_path, cache, image_path):
    folder = tmp_path / "lm"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    path = _tutorial_file(folder, _picture(), image_path=image_path)
    ds, pending = read_labelme(folder, "val", embedded_dir=tmp_path / "out")
    assert len(pending) == 1 and pending[0].target.suffix == ".jpg"
    assert (ds.records[0]["height"], ds.records[0]["width"]) == (32, 40)
    (record,) = load_dataset(folder).records
    image = Path(record["file_name"])
    assert image.is_relative_to(cache) and image.suffix == ".jpg"
    assert np.array_equal(read_image(image), _embedded(path)[1])


# -- 3. 16-bit colour TIFF / PNG ------------------------------------------------------------------------------------


def _tiff(
    path: Path,
    arr: np.ndarray,
    *,
    order: str = "<",
    deflate: bool = False,
    rows_per_strip: int | None = None,
    orientation: int | None = None,
) -> None:
    """A baseline TIFF as tifffile's `imwrite(path, arr, photometric="rgb")` writes it (chunky 16-bit samples,
    unsigned SampleFormat, strips; `compression="zlib"` is Adobe deflate, 8), with an optional Orientation tag."""
    h, w, c = arr.shape
    rows = rows_per_strip or h
    strips = []
    for y in range(0, h, rows):
        raw = arr[y : y + rows].astype(f"{order}u2").tobytes()
        strips.append(zlib.compress(raw) if deflate else raw)
    tags: dict[int, tuple[int, list[int]]] = {  # tag: (type 3 SHORT / 4 LONG, values)
        256: (3, [w]),
        257: (3, [h]),
        258: (3, [16] * c),
        259: (3, [8 if deflate else 1]),
        262: (3, [2]),
        273: (4, [0] * len(strips)),
        277: (3, [c]),
        278: (3, [rows]),
        279: (4, [len(s) for s in strips]),
        284: (3, [1]),
        339: (3, [1] * c),
    }
    if c == 4:
        tags[338] = (3, [2])  # ExtraSamples: unassociated alpha
    if orientation is not None:
        tags[274] = (3, [orientation])
    ifd_at = 8
    extra_at = ifd_at + 2 + 12 * len(tags) + 4
    extra = b""
    entries = b""
    data_at = extra_at + sum(
        len(v) * (2 if t == 3 else 4) for t, v in tags.values() if len(v) * (2 if t == 3 else 4) > 4
    )
    offsets = [data_at + sum(len(s) for s in strips[:k]) for k in range(len(strips))]
    tags[273] = (4, offsets)
    for tag in sorted(tags):
        kind, values = tags[tag]
        packed = struct.pack(f"{order}{len(values)}{'H' if kind == 3 else 'I'}", *values)
        if len(packed) <= 4:
            entries += struct.pack(f"{order}HHI", tag, kind, len(values)) + packed.ljust(4, b"\0")
        else:
            entries += struct.pack(f"{order}HHII", tag, kind, len(values), extra_at + len(extra))
            extra += packed
    head = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(f"{order}I", ifd_at)
    body = head + struct.pack(f"{order}H", len(tags)) + entries + struct.pack(f"{order}I", 0) + extra
    assert len(body) == data_at
    path.write_bytes(body + b"".join(strips))


def _png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit colour PNG as OpenCV's `imwrite` of a uint16 H×W×3 array writes one (colour type 2, big-endian)."""
    h, w, c = arr.shape
    rows = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def _twelve_bit(h: int = 24, w: int = 32, channels: int = 3) -> np.ndarray:
    """12-bit camera data (0..4095) in each channel."""
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [xx * 4095 // (w - 1), yy * 4095 // (h - 1), (xx * 97 + yy * 131) % 4096, np.full_like(xx, 4095)]
    return np.stack(planes[:channels], axis=2).astype(np.uint16)


@pytest.mark.parametrize(
    "kind",
    ["tiff", "tiff-big-endian", "tiff-deflate", "tiff-deflate-big-endian", "tiff-strips", "tiff-rgba", "png"],
)
def test_16_bit_colour_with_12_bit_data_keeps_its_picture(tmp_path, kind):
    arr = _twelve_bit(channels=4 if kind == "tiff-rgba" else 3)
    path = tmp_path / ("x.png" if kind == "png" else "x.tif")
    if kind == "png":
        _png16(path, arr)
    else:
        order = ">" if "big-endian" in kind else "<"
        _tiff(path, arr, order=order, deflate="deflate" in kind, rows_per_strip=5 if kind == "tiff-strips" else None)
    assert Image.open(path).mode in ("RGB", "RGBA")  # what Pillow makes of it: 8 bits a channel
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    assert np.array_equal(out, (arr[..., :3] >> 4).astype(np.uint8))  # 12 bits used: >> 4, as for 16-bit gray
    assert out.max() == 255 and out.mean() > 60  # a picture, not near-black 0..15


def test_16_bit_colour_full_range_and_orientation(tmp_path):
    arr = (_twelve_bit().astype(np.uint32) * 16 + 15).astype(np.uint16)  # 16 bits used: >> 8, as before
    _tiff(tmp_path / "full.tif", arr)
    assert np.array_equal(read_image(tmp_path / "full.tif"), (arr >> 8).astype(np.uint8))
    _tiff(tmp_path / "turned.tif", _twelve_bit(), orientation=6)  # stored sideways: shown turned 90° clockwise
    out = read_image(tmp_path / "turned.tif")
    assert np.array_equal(out, np.rot90(_twelve_bit() >> 4, k=-1).astype(np.uint8))  # both decodes turned


# -- 4. instance label images given straight to --data -----------------------------------------------------------


def _label_image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A StarDist-style label image: uint16, 0 background, one value per nucleus."""
    labels = np.zeros((h, w), np.uint16)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    for value in range(1, 7):
        cy, cx = rng.integers(6, h - 6), rng.integers(6, w - 6)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = value
    return labels


def _raw_image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A 16-bit microscopy image: noisy everywhere."""
    rng = np.random.default_rng(100 + seed)
    return (rng.normal(900, 120, (h, w)).clip(0, 4095)).astype(np.uint16)


def _stardist(root: Path) -> None:
    """StarDist's dsb2018 layout: {train,test}/{images,masks}/<name>.tif, single-page 16-bit TIFFs."""
    for split in ("test", "train"):
        for n in range(3):
            for folder, arr in (("images", _raw_image(n)), ("masks", _label_image(n))):
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / split / folder / f"img_{n}.tif")


def test_label_images_as_data_say_to_run_convert_masks(tmp_path):
    root = tmp_path / "dsb2018"
    _stardist(root)
    masks, images = root / "train" / "masks", root / "train" / "images"
    for data in (root, root / "train", masks):
        with pytest.raises(DatasetError) as e:
            load_dataset(data, "train")
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{data}: ")
        assert f"`fastinst convert --masks {masks} --images {images} --output data.json`" in msg
    convert_label_images(masks, images, tmp_path / "cells.json", class_name="nucleus")  # the hint works
    ds = load_dataset(tmp_path / "cells.json")
    assert len(ds.records) == 3 and ds.names == ["nucleus"]


def test_cellpose_folder_as_data_says_to_run_convert_masks(tmp_path):
    folder = tmp_path / "cellpose"
    for n in range(2):
        write_image(folder / f"cells{n}.png", 48, 64, seed=n)
        Image.fromarray(_label_image(n)).save(folder / f"cells{n}_masks.png")  # 16-bit PNG, as Cellpose saves
    with pytest.raises(DatasetError, match=rf"fastinst convert --masks {folder} --images {folder} "):
        load_dataset(folder)


def test_a_folder_of_photos_gets_the_plain_message(tmp_path):
    for n in range(3):
        write_image(tmp_path / "photos" / f"p{n}.jpg", seed=n)
        Image.fromarray(_raw_image(n)).save(tmp_path / "photos" / f"g{n}.tif")  # raw gray images are no labels
    with pytest.raises(DatasetError, match="not a dataset layout fastinst knows") as e:
        load_dataset(tmp_path / "photos")
    assert "--masks" not in str(e.value)


# -- 5. a broken labelme mask shape --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda png: png[:40], r"its 40 bytes start as a PNG but are truncated or damaged"),
        (lambda png: png[:60] + bytes(b ^ 0xFF for b in png[60:70]) + png[70:], r"the image data is broken \("),
        (lambda png: b"GIF-ish junk" * 3, r"its 36 bytes are not a PNG Pillow can read"),
    ],
)
def test_broken_labelme_mask_names_the_file_and_the_shape(tmp_path, damage, reason):
    folder = tmp_path / "lm"
    write_image(folder / "a.jpg")
    good = _png_bytes(np.eye(8, dtype=bool))  # labelme stores a mask shape as a 1-bit PNG of its box
    mask = base64.b64encode(damage(good)).decode("ascii")
    shapes = [
        _labelme_shape("dog", _corners(box_polygon(2, 2, 9, 9))),
        _labelme_shape("cat", [(10, 10), (17, 17)], "mask", mask=mask),
    ]
    write_labelme(folder / "a.json", shapes, "a.jpg", h=32, w=40)
    with pytest.raises(DatasetError) as e:
        load_dataset(folder)
    msg = str(e.value)
    assert "\n" not in msg and "_io.BytesIO" not in msg and " at 0x" not in msg
    assert msg.startswith(f"{folder / 'a.json'}: shapes[1] (label 'cat') mask cannot be decoded: ")
    assert re.search(reason, msg), msg


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xd8\xff\xe0" * 4, r"the image data is broken \(Truncated File Read\)"),  # a JPEG cut short
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 8, r"its 16 bytes start as a PNG but are truncated or damaged"),
        (b"hello, world", r"its 12 bytes are not an image Pillow can read"),
    ],
)
def test_broken_labelme_image_data_names_the_file(tmp_path, data, reason):
    folder = tmp_path / "lm"
    shapes = [_labelme_shape("dog", _corners(box_polygon(2, 2, 9, 9)))]
    write_labelme(folder / "a.json", shapes, "gone.jpg", base64.b64encode(data).decode("ascii"), h=32, w=40)
    with pytest.raises(DatasetError) as e:
        read_labelme(folder, embedded_dir=tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and "_io.BytesIO" not in msg
    assert re.fullmatch(re.escape(f"{folder / 'a.json'}: imageData cannot be decoded: ") + reason, msg), msg
