"""`load_dataset`: every layout in its native form, the COCO loading rules, and one clear error per kind of bad data."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fastinst.data.ade20k import ADE20K_THINGS
from fastinst.data.registry import load_dataset
from fastinst.errors import DatasetError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import makers
from makers import H, W, box_polygon, check_against, coco_dict, decoded, make_coco, rle, write_image


def _coco_expected() -> dict:
    return {
        "a.jpg": [
            (3, makers.polygon_mask(box_polygon(2, 2, 12, 10)), 0),
            (7, makers.polygon_mask(box_polygon(14, 4, 30, 20)), 0),
        ],
        "b.jpg": [(7, makers.box_mask(0, 0, 8, 8), 1)],
    }


def _json_only(tmp_path: Path, data: dict, name: str = "ann.json") -> Path:
    """A COCO json next to its images."""
    for n, im in enumerate(data["images"]):
        write_image(tmp_path / im["file_name"], im.get("height", H), im.get("width", W), seed=n)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# -- layouts ----------------------------------------------------------------------------------------------------------


def test_coco_folder(tmp_path):
    ds = load_dataset(make_coco(tmp_path / "coco"), "val")
    assert ds.names == ["dog", "cat"] and ds.category_ids == [3, 7]  # contiguous order = sorted dataset ids
    assert ds.name == "coco_val2017" and ds.root == tmp_path / "coco"
    assert [r["image_id"] for r in ds.records] == [10, 11]
    assert all(Path(r["file_name"]).is_absolute() and Path(r["file_name"]).is_file() for r in ds.records)
    assert ds.records[1]["annotations"][0]["iscrowd"] == 1  # crowd kept
    assert [c["id"] for c in ds.coco["categories"]] == [3, 7] and len(ds.coco["annotations"]) == 3
    check_against(ds, _coco_expected())


def test_coco_folder_images_dir_and_filter_empty(tmp_path):
    root = tmp_path / "d"
    make_coco(root, split="train")
    (root / "images").mkdir()
    (root / "train").rename(root / "images" / "train")  # images/<split>/ instead of <split>/
    ds = load_dataset(root, "train", filter_empty=True)
    assert [r["image_id"] for r in ds.records] == [10]  # image 11 holds only a crowd region
    assert len(ds.coco["images"]) == 2


def test_coco_json_path_and_image_root(tmp_path):
    path = _json_only(tmp_path / "x", coco_dict())
    check_against(load_dataset(path), _coco_expected())
    # images in an images/ folder beside the json's folder
    moved = tmp_path / "y"
    (moved / "annotations").mkdir(parents=True)
    for f in ("a.jpg", "b.jpg"):
        write_image(moved / "images" / f)
    (moved / "annotations" / "inst.json").write_text(json.dumps(coco_dict()))
    assert load_dataset(moved / "annotations" / "inst.json").image_root == moved / "images"
    # explicit image_root
    other = tmp_path / "z"
    (other / "pics").mkdir(parents=True)
    for f in ("a.jpg", "b.jpg"):
        write_image(other / "pics" / f)
    (other / "i.json").write_text(json.dumps(coco_dict()))
    assert load_dataset(other / "i.json", image_root=other / "pics").image_root == other / "pics"


def test_yolo_yaml_and_folder(tmp_path):
    yaml, expected = makers.make_yolo(tmp_path / "yolo")
    ds = load_dataset(yaml, "val")
    assert ds.names == ["person", "car"] and ds.category_ids == [1, 2]
    check_against(ds, expected)
    assert len(load_dataset(yaml, "val", filter_empty=True)) == 2
    check_against(load_dataset(tmp_path / "yolo", "val"), expected)  # a folder holding one YAML
    assert len(load_dataset(yaml, "train")) == 1


def test_yolo_list_names_txt_split_and_bbox_lines(tmp_path, capsys):
    root = tmp_path / "y"
    yaml, _ = makers.make_yolo(root)
    (root / "val.txt").write_text("./images/val/p.jpg\n./images/val/q.jpg\n")
    with open(root / "labels" / "val" / "q.txt", "a") as f:
        f.write("0 0.5 0.5 0.2 0.2\n")  # a detection line: no polygon
    yaml.write_text("train: images/train\nval: val.txt\nnames: [person, car]\n")  # no `path`: the YAML's folder
    ds = load_dataset(yaml, "val")
    expected = f"note: {yaml}: skipped annotations without a segmentation (bbox only): 1"
    assert capsys.readouterr().err.splitlines() == [expected]
    assert sorted(Path(r["file_name"]).name for r in ds.records) == ["p.jpg", "q.jpg"]


def test_cityscapes(tmp_path):
    expected = makers.make_cityscapes(tmp_path / "cs")
    ds = load_dataset(tmp_path / "cs", "val")
    assert ds.names == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    assert ds.category_ids == [24, 25, 26, 27, 28, 31, 32, 33]
    check_against(ds, expected)
    assert all(isinstance(a["segmentation"], dict) for r in ds.records for a in r["annotations"])


@pytest.mark.parametrize("labels", ["instance", "semantic"])
def test_ade20k_pngs(tmp_path, labels):
    expected = makers.make_ade20k(tmp_path / "ade", labels=labels)
    ds = load_dataset(tmp_path / "ade", "val", ade_labels=labels)
    assert len(ds.names) == 100 and ds.category_ids == sorted(i for i, _ in ADE20K_THINGS)
    assert ds.names[ds.category_ids.index(12)] == "person"
    check_against(ds, expected)


def test_ade20k_premade_json(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    write_image(base / "images" / "validation" / "ADE_val_00000001.jpg")
    mask = makers.box_mask(3, 3, 9, 9)
    data = {
        "images": [{"id": "ADE_val_00000001", "file_name": "ADE_val_00000001.jpg", "height": H, "width": W}],
        "categories": [{"id": i, "name": n} for i, n in ADE20K_THINGS],
        "annotations": [
            {
                "id": 1,
                "image_id": "ADE_val_00000001",
                "category_id": 12,
                "segmentation": rle(mask),
                "area": 36,
                "bbox": [3, 3, 6, 6],
                "iscrowd": 0,
            }
        ],
    }
    (base / "ade20k_instance_val.json").write_text(json.dumps(data))
    ds = load_dataset(tmp_path, "val")
    assert ds.records[0]["image_id"] == 1 and ds.coco["annotations"][0]["image_id"] == 1  # string ids renumbered
    check_against(ds, {"ADE_val_00000001.jpg": [(12, mask, 0)]})


def test_short_names(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTINST_DATASETS", str(tmp_path))
    make_coco(tmp_path / "coco", split="val2017")
    makers.make_cityscapes(tmp_path / "cityscapes")
    makers.make_ade20k(tmp_path)
    assert load_dataset("coco", "val").name == "coco_val2017"
    assert load_dataset("cityscapes", "val").name == "cityscapes_val"
    assert load_dataset("ade20k", "val").name == "ade20k_val"
    with pytest.raises(DatasetError, match="FASTINST_DATASETS"):
        load_dataset("nothing-here")


# -- COCO loading rules -----------------------------------------------------------------------------------------------


def test_bad_polygons_bbox_only_and_clipping(tmp_path, capsys):
    data = coco_dict()
    anns = data["annotations"]
    anns[0]["segmentation"] = [box_polygon(2, 2, 12, 10), [1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7]]  # two bad parts
    anns.append({"id": 4, "image_id": 11, "category_id": 3, "segmentation": [[1, 1, 2, 2]], "iscrowd": 0})
    anns.append({"id": 5, "image_id": 11, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 0})
    anns.append(
        {"id": 6, "image_id": 11, "category_id": 3, "segmentation": [box_polygon(-5, 20, 50, 40)], "iscrowd": 0}
    )
    ds = load_dataset(_json_only(tmp_path, data))
    text = capsys.readouterr().err
    assert all(line.startswith("note: ") and "ann.json: " in line for line in text.splitlines())  # one line each
    assert "fewer than 6 coordinates: 3" in text and "without a valid polygon: 1" in text
    assert "(bbox only): 1" in text and "clipped polygons reaching outside their image: 1" in text
    assert len(ds.records[0]["annotations"][0]["segmentation"]) == 1
    assert len(ds.records[1]["annotations"]) == 2  # crowd + the clipped polygon
    clipped = ds.records[1]["annotations"][1]["segmentation"][0]
    assert clipped == [0.0, 20.0, W, 20.0, W, H, 0.0, H]
    assert decoded(ds.records[1])[1].sum() == W * (H - 20)
    assert {a["id"] for a in ds.coco["annotations"]} == {1, 2, 3, 6}


def test_missing_area_and_ids_are_filled(tmp_path, capsys):
    data = coco_dict()
    for a in data["annotations"]:
        del a["area"], a["bbox"], a["id"]
    ds = load_dataset(_json_only(tmp_path, data))
    assert "renumbered annotation ids (missing, repeated or not positive): 3" in capsys.readouterr().err
    assert [a["area"] for a in ds.coco["annotations"]] == [80.0, 256.0, 64.0]
    assert [a["id"] for a in ds.coco["annotations"]] == [1, 2, 3]
    assert ds.coco["annotations"][0]["bbox"] == [2.0, 2.0, 10.0, 8.0]


# -- bad data: one DatasetError naming the file -----------------------------------------------------------------------


def _mutated(fn):
    data = copy.deepcopy(coco_dict())
    fn(data)
    return data


BAD_COCO = {
    "unknown category": (lambda d: d["annotations"][0].update(category_id=99), r"unknown category id 99"),
    "unknown image": (lambda d: d["annotations"][1].update(image_id=5), r"annotations\[1\].*unknown image id 5"),
    "duplicate image id": (lambda d: d["images"][1].update(id=10), r"images\[1\] repeats image id 10"),
    "image without size": (lambda d: d["images"][0].pop("height"), r"images\[0\].*has no 'height'"),
    "no categories": (lambda d: d.update(categories=[]), r"no categories"),
    "rle size": (lambda d: d["annotations"][2]["segmentation"].update(size=[5, 5]), r"RLE size \[5, 5\]"),
    "not polygons": (lambda d: d["annotations"][0].update(segmentation="x"), r"neither polygons nor RLE"),
}


@pytest.mark.parametrize("case", sorted(BAD_COCO))
def test_bad_coco_entries(tmp_path, case):
    fn, pattern = BAD_COCO[case]
    path = _json_only(tmp_path, _mutated(fn))
    with pytest.raises(DatasetError, match=pattern) as err:
        load_dataset(path)
    assert "ann.json" in str(err.value) and "\n" not in str(err.value)


def test_missing_image_file(tmp_path):
    path = _json_only(tmp_path, coco_dict())
    (tmp_path / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"ann.json: image id 11: .*b.jpg not found"):
        load_dataset(path)


@pytest.mark.parametrize(
    "text,pattern", [("", "file is empty"), ('{"images": [', "not valid JSON"), ("[1, 2]", "not a COCO instances file")]
)
def test_bad_json_files(tmp_path, text, pattern):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(DatasetError, match=f"bad.json: {pattern}"):
        load_dataset(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("", "file is empty"),
        ("names: [a, b\nval: x\n", "not valid YAML"),
        ("val: images/val\n", "'names' must be"),
        ("names: [a]\ntrain: images/train\n", "no 'val' entry"),
    ],
)
def test_bad_yaml_files(tmp_path, text, pattern):
    makers.make_yolo(tmp_path)
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(DatasetError, match=f"data.yaml: {pattern}"):
        load_dataset(tmp_path / "data.yaml")


@pytest.mark.parametrize(
    "line,pattern",
    [
        ("7 0.1 0.1 0.5 0.1 0.5 0.5", r"q.txt:2: class 7 is not an index"),
        ("0 a b c d e f", r"q.txt:2: expected numbers"),
    ],
)
def test_bad_yolo_labels(tmp_path, line, pattern):
    yaml, _ = makers.make_yolo(tmp_path)
    with open(tmp_path / "labels" / "val" / "q.txt", "a") as f:
        f.write(line + "\n")
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(yaml)


def test_yolo_missing_listed_image(tmp_path):
    yaml, _ = makers.make_yolo(tmp_path)
    (tmp_path / "val.txt").write_text("images/val/p.jpg\nimages/val/gone.jpg\n")
    yaml.write_text("val: val.txt\nnames: [a, b]\n")
    with pytest.raises(DatasetError, match=r"val.txt: listed image images/val/gone.jpg not found"):
        load_dataset(yaml)


def test_cityscapes_missing_image(tmp_path):
    makers.make_cityscapes(tmp_path)
    next(tmp_path.rglob("bonn*_leftImg8bit.png")).unlink()
    with pytest.raises(DatasetError, match=r"bonn_000000_000019_leftImg8bit.png: image file not found"):
        load_dataset(tmp_path, "val")


def test_ade20k_bad_png(tmp_path):
    makers.make_ade20k(tmp_path)
    png = next(tmp_path.rglob("ADE_val_00000002.png"))
    from PIL import Image

    Image.fromarray(np.zeros((H, W), np.uint8)).save(png)
    with pytest.raises(DatasetError, match=r"ADE_val_00000002.png: expected an RGB"):
        load_dataset(tmp_path, "val")


def test_unknown_layout_and_split(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError, match="not a dataset layout"):
        load_dataset(tmp_path / "stuff")
    make_coco(tmp_path / "c")
    with pytest.raises(DatasetError, match=r"no instances_test\*.json .*instances_val2017.json"):
        load_dataset(tmp_path / "c", "test")
