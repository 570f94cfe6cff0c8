"""labelme folders: every shape type, grouped parts, `__ignore__`, labels.txt, embedded images, splits, and errors."""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastinst.data.labelme import load_labelme, read_labelme, write_embedded_images
from fastinst.data.registry import detect_layout, load_dataset
from fastinst.errors import DatasetError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from makers import H, W, box_mask, box_polygon, decoded, polygon_mask, write_image, write_labelme

# the mask of the `mask` shape: 7 rows x 6 columns, pasted with its top-left pixel at (x=5, y=20)
SMALL_MASK = np.array(
    [
        [0, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 0, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 0, 0],
    ],
    bool,
)


def png_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def shape(label, points, shape_type="polygon", group_id=None, mask=None) -> dict:
    """One shape exactly as labelme 5.x saves it."""
    return {
        "label": label,
        "points": [[x if isinstance(x, str) else float(x), float(y)] for x, y in points],
        "group_id": group_id,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
        "mask": mask,
    }


def corners(poly: list[float]) -> list[tuple[float, float]]:
    return list(zip(poly[0::2], poly[1::2], strict=True))


def placed(small: np.ndarray, x0: int, y0: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
    return m


def make_labelme(root: Path, embedded: bool = True, labels_txt: bool = True) -> dict:
    """`root/a.json` (+ a.jpg) and, with `embedded`, `root/b.json` whose b.png exists only as imageData.
    -> {json stem: [(label name, bool mask, iscrowd)]} (a crowd region once per category)."""
    write_image(root / "a.jpg", seed=1)
    if labels_txt:
        (root / "labels.txt").write_text("__ignore__\n_background_\ndog\ncat\n")
    ignore = box_polygon(30, 20, 38, 30)
    write_labelme(
        root / "a.json",
        [
            shape("cat", corners(box_polygon(2, 2, 12, 10))),
            shape("dog", [(14, 4), (20, 12)], "rectangle", group_id=1),  # two parts of one dog
            shape("dog", corners(box_polygon(22, 4, 30, 12)), group_id=1),
            shape("cat", [(5, 20), (10, 26)], "mask", mask=png_b64(SMALL_MASK.astype(np.uint8))),
            shape("__ignore__", [(30, 20), (38, 30)], "rectangle"),
            shape("cat", [(1, 1), (5, 5)], "line"),
            shape("cat", [(1, 1), (5, 5), (9, 1)], "linestrip"),
            shape("dog", [(3, 3)], "point"),
            shape("dog", [(1, 1), (8, 8)]),  # a polygon of 2 points
            shape("_background_", corners(box_polygon(0, 0, 4, 4))),
        ],
        "a.jpg",
    )
    expected = {
        "a": [
            ("cat", polygon_mask(box_polygon(2, 2, 12, 10)), 0),
            ("dog", polygon_mask(box_polygon(14, 4, 20, 12)) | polygon_mask(box_polygon(22, 4, 30, 12)), 0),
            ("cat", placed(SMALL_MASK, 5, 20), 0),
            ("dog", polygon_mask(ignore), 1),
            ("cat", polygon_mask(ignore), 1),
        ]
    }
    if embedded:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(2).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(buf, format="PNG")
        mask2 = np.ones((4, 5), np.uint8) * 255  # any non-zero value is foreground
        write_labelme(
            root / "b.json",
            [
                shape("cat", [(2, 2), (6, 5)], "mask", group_id=3, mask=png_b64(mask2)),
                shape("cat", corners(box_polygon(10, 2, 16, 8)), group_id=3),
                shape("dog", [(20, 16), (26, 16)], "circle"),  # centre, a point on the rim: radius 6
            ],
            "b.png",
            base64.b64encode(buf.getvalue()).decode("ascii"),
        )
        expected["b"] = [("cat", box_mask(2, 2, 7, 6) | polygon_mask(box_polygon(10, 2, 16, 8)), 0), ("dog", None, 0)]
    return expected


def _check(ds, expected: dict) -> None:
    assert len(ds.records) == len(expected)
    for r in ds.records:
        stem = Path(r["file_name"]).stem
        want = expected[stem]
        got = [(ds.names[a["category_id"]], m, a["iscrowd"]) for a, m in zip(r["annotations"], decoded(r), strict=True)]
        assert [(n, c) for n, _, c in got] == [(n, c) for n, _, c in want], stem
        for (_, m, _), (_, w, _) in zip(got, want, strict=True):
            if w is None:  # the circle: compared with a disc below
                _check_disc(m, 20, 16, 6)
            else:
                assert np.array_equal(m, w), stem


def _check_disc(mask: np.ndarray, cx: float, cy: float, r: float) -> None:
    yy, xx = np.mgrid[:H, :W]
    d = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy)
    assert mask[d < r - 1].all() and not mask[d > r + 1].any()
    assert abs(int(mask.sum()) - np.pi * r * r) < 2 * np.pi * r


def test_folder_with_every_shape_kind(tmp_path, capsys):
    root = tmp_path / "lm"
    expected = make_labelme(root, embedded=False)
    assert detect_layout(root) == ("labelme", root)
    ds = load_dataset(root, "train")
    assert ds.names == ["dog", "cat"] and ds.category_ids == [1, 2]  # labels.txt order, specials left out
    _check(ds, expected)
    ann = ds.records[0]["annotations"]
    assert isinstance(ann[0]["segmentation"], list) and len(ann[1]["segmentation"]) == 2  # polygons stay polygons
    assert isinstance(ann[2]["segmentation"], dict)  # the mask shape is RLE
    err = capsys.readouterr().err
    assert "one split, used for split 'train'" in err
    assert "skipped shapes that are not areas (line, linestrip, point, ...): 3" in err
    assert "skipped polygons with fewer than 3 points: 1" in err
    assert "skipped _background_ shapes: 1" in err


def test_embedded_image_is_written_by_read_labelme_and_loaded_from_the_cache(tmp_path, monkeypatch):
    root = tmp_path / "lm"
    expected = make_labelme(root)
    monkeypatch.setenv("FASTINST_CACHE", str(tmp_path / "cache"))
    loaded = load_dataset(root)  # as labelme opens it: from imageData, decoded once into the user's cache
    b = next(r for r in loaded.records if Path(r["file_name"]).name == "b.png")
    assert Path(b["file_name"]).is_relative_to(tmp_path / "cache") and not (root / "b.png").exists()
    _check(loaded, expected)
    ds, pending = read_labelme(root, "val", embedded_dir=tmp_path / "out" / "val_images")
    assert [p.target for p in pending] == [tmp_path / "out" / "val_images" / "b.png"]
    assert not (tmp_path / "out").exists()  # nothing written while reading
    write_embedded_images(pending)
    img = np.asarray(Image.open(tmp_path / "out" / "val_images" / "b.png"))
    assert img.shape == (H, W, 3) and np.array_equal(
        img, np.random.default_rng(2).integers(0, 255, (H, W, 3), np.uint8)
    )
    _check(ds, expected)


def test_splits_and_sorted_labels_without_labels_txt(tmp_path, capsys):
    root = tmp_path / "lm"
    for split, label in (("train", "zebra"), ("validation", "ant")):
        write_image(root / split / "x.jpg")
        write_labelme(root / split / "x.json", [shape(label, corners(box_polygon(2, 2, 9, 9)))], "x.jpg")
    train, val = load_labelme(root, "train"), load_dataset(root, "val")
    assert train.names == val.names == ["ant", "zebra"]  # every split's labels, sorted: one class list
    assert [a["category_id"] for a in train.records[0]["annotations"]] == [1]
    assert [a["category_id"] for a in val.records[0]["annotations"]] == [0]
    assert "flat" not in capsys.readouterr().err
    with pytest.raises(DatasetError, match=r"no labelme sub-folder for split 'test' \(found: train \(train/\)"):
        load_labelme(root, "test")


def test_image_path_variants_and_labels_txt_in_parent(tmp_path):
    root = tmp_path / "example" / "data_annotated"
    root.mkdir(parents=True)
    (tmp_path / "example" / "labels.txt").write_text("__ignore__\n_background_\ncar\n")  # labelme's example layout
    write_image(root / "a.jpg")
    write_image(root / "b.png")
    poly = corners(box_polygon(1, 1, 8, 8))
    write_labelme(root / "a.json", [shape("car", poly)], "C:\\Users\\me\\photos\\a.jpg")  # stale Windows path
    write_labelme(root / "b.json", [shape("car", poly, shape_type=None)], "")  # no imagePath: <stem>.<ext>
    ds = load_labelme(root)
    assert ds.names == ["car"] and [Path(r["file_name"]).name for r in ds.records] == ["a.jpg", "b.png"]
    assert all(len(r["annotations"]) == 1 for r in ds.records)


def test_file_list_and_degenerate_shapes(tmp_path, capsys):
    root = tmp_path / "lm"
    write_image(root / "a.jpg")
    bow_tie = [(2, 2), (12, 12), (12, 2), (2, 12)]  # crossing: its signed area cancels, its pixels do not
    shapes = [
        shape("cat", bow_tie),
        shape("cat", [(5, 5), (5, 9)], "rectangle"),
        shape("cat", [(3, 3), (3, 3)], "circle"),
    ]
    path = write_labelme(root / "a.json", shapes, "a.jpg")
    ds = load_labelme([path])
    (ann,) = ds.records[0]["annotations"]
    assert ann["segmentation"] == [[float(v) for xy in bow_tie for v in xy]]
    assert "skipped shapes covering no area: 2" in capsys.readouterr().err


def _one_file(tmp_path: Path, shapes: list, labels: str | None = None, **kw) -> Path:
    root = tmp_path / "lm"
    write_image(root / kw.pop("image", "a.jpg"))
    if labels is not None:
        (root / "labels.txt").write_text(labels)
    write_labelme(root / "a.json", shapes, kw.pop("image_path", "a.jpg"), **kw)
    return root


POLY = corners(box_polygon(2, 2, 9, 9))


@pytest.mark.parametrize(
    ("shapes", "kw", "pattern"),
    [
        (
            [shape("horse", POLY)],
            {"labels": "__ignore__\n_background_\ncat\n"},
            r"a\.json: label 'horse' is not listed in",
        ),
        ([shape("cat", POLY)], {"h": H + 1}, r"a\.json: imageHeight/imageWidth say 40x33 .* is 40x32"),
        (
            [shape("cat", POLY)],
            {"image_path": "gone.jpg", "image": "other.jpg"},
            r"image .*gone\.jpg not found \(and the file embeds no",
        ),
        ([shape("cat", [["x", 1], [2, 3], [4, 5]])], {}, r"a\.json: shapes\[0\] 'points' is not a list"),
        (
            [shape("cat", [(1, 1), (4, 4)], "mask", mask="%%%")],
            {},
            r"a\.json: shapes\[0\] \(label 'cat'\) mask cannot be decoded: the base64 text decodes to no bytes",
        ),
        ([{"points": POLY}], {}, r"a\.json: shapes\[0\] has no label"),
        ([shape("cat", POLY)], {"labels": "__ignore__\ncat\ncat\n"}, r"labels\.txt:3: label 'cat' is listed twice"),
    ],
)
def test_errors_name_the_file(tmp_path, shapes, kw, pattern):
    labels = kw.pop("labels", None)
    root = _one_file(tmp_path, shapes, labels, **kw)
    with pytest.raises(DatasetError, match=pattern) as e:
        load_dataset(root)
    assert "\n" not in str(e.value)


def test_training_batch_from_a_converted_labelme_folder(tmp_path):
    import torch

    from fastinst.config import apply_overrides, get_config
    from fastinst.data.convert import convert_dataset
    from fastinst.data.loader import build_train_loader

    root = tmp_path / "lm"
    expected = make_labelme(root)
    _, out, written = convert_dataset(root, "train", tmp_path / "conv" / "train.json")
    assert written == [tmp_path / "conv" / "train_images" / "b.png"]
    ds = load_dataset(out, filter_empty=True)
    _check(ds, expected)
    cfg = apply_overrides(get_config("fastinst-demo"), ["input.min_size_train=[32]", "input.max_size_train=64"])
    batch = next(iter(build_train_loader(ds.records, cfg, 2)))
    assert len(batch) == 2
    for sample in batch:
        labels, masks = sample["instances"]["labels"], sample["instances"]["masks"]
        n = 3 if sample["image_id"] == 1 else 2  # crowd regions are not training targets
        assert labels.dtype == torch.int64 and len(labels) == n and masks.shape[0] == n
        assert masks.shape[1:] == sample["image"].shape[1:] and masks.flatten(1).any(1).all()
