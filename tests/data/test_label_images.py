"""Instance label images: VOC palette PNGs with class maps and void borders, 16/32-bit TIFFs, pairing, and errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastinst.data.convert import convert_label_images
from fastinst.data.label_images import label_key, load_label_images, read_names
from fastinst.data.registry import load_dataset
from fastinst.errors import DatasetError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from makers import H, W, decoded, write_image

VOC_NAMES = (
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor"
).split()


def palette_png(path: Path, arr: np.ndarray) -> None:
    """A palette ("P") PNG as VOC ships them: index = value, 255 = void (drawn cream)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    pal = np.random.default_rng(0).integers(0, 255, (256, 3)).astype(np.uint8)
    pal[0], pal[255] = 0, (224, 224, 192)
    im.putpalette(pal.ravel().tolist())
    im.save(path)


def make_voc(root: Path) -> dict:
    """JPEGImages + SegmentationObject + SegmentationClass for two images -> {stem: [(class value, mask)]}."""
    expected = {}
    for n, stem in enumerate(("2007_000032", "2007_000039")):
        obj = np.zeros((H, W), np.uint8)
        cls = np.zeros((H, W), np.uint8)
        obj[2:12, 2:14], cls[2:12, 2:14] = 1, 15  # a person
        obj[14:30, 4:20], cls[14:30, 4:20] = 2, 12  # a dog, whose last rows are marked "cat" in the class map
        cls[27:30, 4:20] = 8
        obj[4:20, 24 - n : 36], cls[4:20, 24 - n : 36] = 3, 1  # an aeroplane
        want = [(15, obj == 1), (12, obj == 2), (1, obj == 3)]
        for m in (obj == 1, obj == 2, obj == 3):  # a void border round every object, in both maps
            border = np.zeros_like(m)
            border[1:-1, 1:-1] = m[1:-1, 1:-1] & ~(m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:])
            obj[border], cls[border] = 255, 255
        want = [(c, m & (obj != 255)) for c, m in want]
        palette_png(root / "SegmentationObject" / f"{stem}.png", obj)
        palette_png(root / "SegmentationClass" / f"{stem}.png", cls)
        write_image(root / "JPEGImages" / f"{stem}.jpg", seed=n)
        expected[stem] = want
    write_image(root / "JPEGImages" / "2008_000001.jpg")  # an image without segmentation
    return expected


def _masks_by_image(ds) -> dict:
    out = {}
    for r in ds.records:
        out[Path(r["file_name"]).stem] = [
            (ds.category_ids[a["category_id"]], m) for a, m in zip(r["annotations"], decoded(r), strict=True)
        ]
    return out


def _same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for stem, items in want.items():
        assert [c for c, _ in got[stem]] == [c for c, _ in items], stem
        for (_, a), (_, b) in zip(got[stem], items, strict=True):
            assert np.array_equal(a, b), stem


@pytest.mark.parametrize("names", [VOC_NAMES, VOC_NAMES[1:]])
def test_voc_objects_with_class_maps(tmp_path, capsys, names):
    expected = make_voc(tmp_path)
    ds = load_label_images(
        tmp_path / "SegmentationObject",
        tmp_path / "JPEGImages",
        class_masks=tmp_path / "SegmentationClass",
        names=names,
    )
    assert ds.names == VOC_NAMES[1:] and ds.category_ids == list(range(1, 21))
    _same(_masks_by_image(ds), expected)
    err = capsys.readouterr().err
    assert "1 images have no label image and are left out: 2008_000001.jpg" in err
    assert "instances whose pixels carry several classes (majority class used): 2" in err
    # converted to a COCO json and loaded back: the same masks, pixel by pixel
    names_file = tmp_path / "voc.txt"
    names_file.write_text("\n".join(names) + "\n")
    _, out = convert_label_images(
        tmp_path / "SegmentationObject",
        tmp_path / "JPEGImages",
        tmp_path / "out" / "voc.json",
        class_masks=tmp_path / "SegmentationClass",
        names=names_file,
    )
    again = load_dataset(out)
    assert again.names == ds.names
    _same(_masks_by_image(again), expected)


def test_16_and_32_bit_tiffs_cellpose_and_ctc_pairing(tmp_path):
    cells = tmp_path / "cells"
    labels = np.zeros((H, W), np.uint16)
    labels[2:10, 2:10], labels[12:20, 5:30], labels[22:30, 30:38] = 300, 4000, 65535  # values above 255
    labels[0, 39] = 255  # 255 is an ordinary instance in a 16-bit image
    write_image(cells / "img1.tif")
    Image.fromarray(labels).save(cells / "img1_masks.tif")
    assert Image.open(cells / "img1_masks.tif").mode == "I;16"
    int32 = np.zeros((H, W), np.int32)
    int32[5:15, 5:15], int32[20:25, 1:39] = 70000, 2
    write_image(cells / "img2.png")
    Image.fromarray(int32).save(cells / "img2_cp_masks.tif")  # mode I
    floats = (int32 > 0).astype(np.float32) * 7
    write_image(cells / "img3.png")
    Image.fromarray(floats).save(cells / "img3_seg.tif")  # mode F with whole numbers
    ds = load_label_images(cells, cells, class_name="cell")  # Cellpose: images and masks in one folder
    assert ds.names == ["cell"]
    got = _masks_by_image(ds)
    _same(
        got,
        {
            "img1": [(1, labels == v) for v in (255, 300, 4000, 65535)],
            "img2": [(1, int32 == 2), (1, int32 == 70000)],
            "img3": [(1, floats == 7)],
        },
    )
    # Cell Tracking Challenge: 01/t000.tif <-> 01_GT/SEG/man_seg000.tif
    write_image(tmp_path / "01" / "t000.tif")
    (tmp_path / "01_GT" / "SEG").mkdir(parents=True)
    Image.fromarray(labels).save(tmp_path / "01_GT" / "SEG" / "man_seg000.tif")
    ctc = load_label_images(tmp_path / "01_GT" / "SEG", tmp_path / "01")
    assert ctc.names == ["object"] and len(ctc.records[0]["annotations"]) == 4


def test_label_keys_and_names():
    assert [label_key(s) for s in ("a_masks", "a_cp_masks", "a_mask", "a_label", "a_labels", "a_seg")] == ["a"] * 6
    assert label_key("man_seg012") == "t012" and label_key("plain") == "plain" and label_key("_masks") == "_masks"
    assert read_names(["Background", "cat", "dog"]) == {1: "cat", 2: "dog"}
    assert read_names(["cat", "dog"]) == {1: "cat", 2: "dog"}


def _pair(tmp_path: Path, label: np.ndarray | None = None, image_size=(H, W)) -> Path:
    """`img/a.jpg` and its label image `lab/a.png` (all zero by default)."""
    write_image(tmp_path / "img" / "a.jpg", *image_size)
    (tmp_path / "lab").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((H, W), np.uint8) if label is None else label).save(tmp_path / "lab" / "a.png")
    return tmp_path


def _tiff(tmp_path: Path, pages: list[np.ndarray]) -> Path:
    """`img/a.jpg` and a TIFF label image `lab/a.tif` of the given pages."""
    write_image(tmp_path / "img" / "a.jpg")
    (tmp_path / "lab").mkdir()
    first, *rest = [Image.fromarray(a) for a in pages]
    first.save(tmp_path / "lab" / "a.tif", save_all=True, append_images=rest)
    return tmp_path


def _binary() -> np.ndarray:
    a = np.zeros((H, W), np.uint8)
    a[3:9, 3:9] = 255
    return a


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda p: _pair(p, np.zeros((H, W, 3), np.uint8)), r"a\.png: a RGB label image; .*one integer per pixel"),
        (lambda p: _pair(p, image_size=(H, W + 2)), r"a\.png: label image is 40x32 but its image .*a\.jpg is 42x32"),
        (lambda p: _pair(p, _binary()), r"a\.png: holds only 0 and 255, a binary mask"),
        (lambda p: _tiff(p, [np.full((H, W), 0.5, np.float32)]), r"a\.tif: a float label image whose values are not"),
        (lambda p: _tiff(p, [np.zeros((H, W), np.uint16)] * 3), r"a\.tif: a 3-page stack; label images must be"),
    ],
)
def test_bad_label_images(tmp_path, make, pattern):
    root = make(tmp_path)
    with pytest.raises(DatasetError, match=pattern) as e:
        load_label_images(root / "lab", root / "img")
    assert "\n" not in str(e.value)


def test_unpaired_label_images_are_listed(tmp_path):
    _pair(tmp_path)
    for n in range(7):
        Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "lab" / f"z{n}_masks.png")
    with pytest.raises(DatasetError, match=r"7 label images have no image in .*: z0_masks\.png, .* and 2 more"):
        load_label_images(tmp_path / "lab", tmp_path / "img")


def test_class_map_problems(tmp_path):
    make_voc(tmp_path)
    kw = {"class_masks": tmp_path / "SegmentationClass"}
    with pytest.raises(DatasetError, match=r"class value 15 \(instance 1 of 2007_000032\.png\) has no name"):
        load_label_images(tmp_path / "SegmentationObject", tmp_path / "JPEGImages", names=["a", "b"], **kw)
    with pytest.raises(DatasetError, match="needs the class names"):
        load_label_images(tmp_path / "SegmentationObject", tmp_path / "JPEGImages", **kw)
    (tmp_path / "SegmentationClass" / "2007_000039.png").unlink()
    with pytest.raises(DatasetError, match=r"no class map for 1 label images: 2007_000039\.png"):
        load_label_images(tmp_path / "SegmentationObject", tmp_path / "JPEGImages", names=VOC_NAMES, **kw)
