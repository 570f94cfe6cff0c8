"""A user's own data through `fastinst train`: background images, unused categories, run length in epochs, LR
schedules that fit a short run, crowded images, and data files that break what their format promises — each said in
one line, naming the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastinst.cli import main
from fastinst.commands.train import prepare_train_split
from fastinst.config import get_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from makers import box_mask, box_polygon, coco_dict, make_coco, rle, write_image

TINY = ["--model", "fastinst-demo", "--device", "cpu", "--val-split", "", "solver.ims_per_batch=2"]


def _yolo_set(root: Path, background: bool = True) -> Path:
    """An Ultralytics segmentation set as its own converter writes it: images/{train,val}, labels/{train,val}, one
    polygon a line normalised to the image, and background images with an empty label file or none at all."""
    for split in ("train", "val"):
        for k in range(3):
            write_image(root / "images" / split / f"img{k}.jpg", seed=k)
            lines = [f"{k % 2} 0.1 0.1 0.6 0.1 0.6 0.7 0.1 0.7", "1 0.65 0.2 0.95 0.2 0.95 0.9 0.65 0.9"]
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"img{k}.txt").write_text("\n".join(lines) + "\n")
        if background:
            write_image(root / "images" / split / "empty_label.jpg", seed=7)
            (root / "labels" / split / "empty_label.txt").write_text("")
            write_image(root / "images" / split / "no_label.jpg", seed=8)
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnc: 2\nnames:\n  0: person\n  1: car\n")
    return yaml


# -- background images -------------------------------------------------------------------------------------------


def test_background_images_are_kept_counted_and_switchable(tmp_path, capsys):
    yaml = _yolo_set(tmp_path / "y")
    cfg = get_config("fastinst-demo")
    train = prepare_train_split(yaml, "train", cfg)
    assert len(train.records) == 5 and train.background_images() == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"note: {yaml}: 2 of 5 training images have no instance and are kept as background (negatives); "
        "input.filter_empty=true leaves them out"
    ]
    cfg.input.filter_empty = True
    train = prepare_train_split(yaml, "train", cfg)
    assert len(train.records) == 3 and train.background_images() == 0
    assert "2 background image(s) (no instance) left out (input.filter_empty=true)" in capsys.readouterr().err


def test_training_on_background_images_runs(tmp_path, capsys):
    yaml = _yolo_set(tmp_path / "y")
    out = tmp_path / "run"
    # a batch of 5 holds every image, the two background ones included
    args = [*TINY, "solver.ims_per_batch=5", "solver.max_iter=1", "solver.num_workers=0"]
    assert main(["train", "--data", str(yaml), "--output", str(out), *args]) == 0
    assert "kept as background" in capsys.readouterr().err
    assert torch.load(out / "last.pth", weights_only=True)["iteration"] == 1


# -- unused categories (labelme2coco's `_background_`) ---------------------------------------------------------------


def _labelme2coco_json(root: Path) -> Path:
    """What labelme's example `labelme2coco.py` writes: category 0 `_background_` that nothing uses, ids from
    labels.txt, polygons, image ids from 0."""
    data = coco_dict()
    data["categories"] = [
        {"supercategory": None, "id": 0, "name": "_background_"},
        {"supercategory": None, "id": 1, "name": "person"},
        {"supercategory": None, "id": 2, "name": "bottle"},
    ]
    for a, cid in zip(data["annotations"], (1, 2, 1), strict=True):
        a["category_id"] = cid
    return make_coco(root, "train2017", data)


def test_unused_categories_are_left_out_and_eval_still_scores(tmp_path, capsys):
    ann = _labelme2coco_json(tmp_path / "lm")
    train = prepare_train_split(ann, "train", get_config("fastinst-demo"))
    assert train.names == ["person", "bottle"] and train.category_ids == [1, 2]
    assert {a["category_id"] for r in train.records for a in r["annotations"]} == {0, 1}
    assert f"note: {ann}: 1 category without annotations left out: _background_" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "--data", str(ann), "--output", str(out), *TINY, "solver.max_iter=1"]) == 0
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert list(ckpt["config"]["model"]["category_ids"]) == [1, 2]
    assert list(ckpt["config"]["model"]["class_names"]) == ["person", "bottle"]
    # the 2-class model scores on the 3-category file: its classes map to the file's ids 1 and 2
    res = tmp_path / "eval"
    assert main(["eval", "--model", "fastinst-demo", "--weights", str(out / "last.pth"), "--data", str(ann),
                 "--split", "train", "--output", str(res), "--device", "cpu"]) == 0  # fmt: skip
    preds = json.loads((res / "predictions.json").read_text())
    assert preds and {p["category_id"] for p in preds} <= {1, 2}


# -- run length and schedule -----------------------------------------------------------------------------------------


def test_epochs_set_the_run_length_and_the_schedule_scales(tmp_path, capsys):
    yaml = _yolo_set(tmp_path / "y", background=False)
    out = tmp_path / "run"
    args = [*TINY, "solver.epochs=2", "solver.checkpoint_period=0"]
    assert main(["train", "--data", str(yaml), "--output", str(out), *args]) == 0
    err = capsys.readouterr().err
    assert "solver.epochs=2: 3 iterations (2 per epoch of 3 images at batch 2)" in err
    assert "solver.steps scaled with the run length: [2400] -> [2]" in err
    assert "solver.warmup_iters scaled with the run length: 50 -> 1" in err
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["iteration"] == 3 and ckpt["config"]["solver"]["max_iter"] == 3


def test_a_warm_up_longer_than_the_run_is_named(tmp_path, capsys):
    yaml = _yolo_set(tmp_path / "y", background=False)
    args = [*TINY, "solver.max_iter=1", "solver.warmup_iters=50"]
    assert main(["train", "--data", str(yaml), "--output", str(tmp_path / "r"), *args]) == 0
    err = capsys.readouterr().err
    assert "note: solver.warmup_iters=50 is not shorter than the run (max_iter 1): the base LR is never reached" in err


def test_more_instances_than_queries_warns_once(tmp_path, capsys):
    data = coco_dict()
    data["annotations"] = [
        {"id": i + 1, "image_id": 10, "category_id": 3, "segmentation": [box_polygon(i, 0, i + 1, 5)], "iscrowd": 0}
        for i in range(12)
    ]
    ann = make_coco(tmp_path / "c", "train2017", data)
    cfg = get_config("fastinst-demo")
    cfg.model.num_queries = 10
    args = [*TINY, "solver.max_iter=1", "model.num_queries=10"]
    assert main(["train", "--data", str(ann), "--output", str(tmp_path / "r"), *args]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "queries" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: 1 training image(s) have more instances than the model's")
    assert "(most: 12 in " in lines[0] and "a.jpg" in lines[0]


# -- data that breaks its format: one line naming the file and the cause ---------------------------------------------


def _train_error(capsys, data: Path, tmp_path: Path, *extra: str) -> str:
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "r"), *TINY, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error: ") and "Traceback" not in "".join(err)
    return err[-1]


@pytest.mark.parametrize(
    ("edit", "cause"),
    [
        (lambda d: d.pop("annotations"), "the file has no 'annotations' list"),
        (lambda d: d.update(annotations=[]), "it has no annotations"),
        (
            lambda d: [a.pop("segmentation") for a in d["annotations"]],
            "2 annotations lack a usable segmentation (bounding boxes only?) and the other 1 are crowd regions",
        ),
        (lambda d: [a.update(iscrowd=1) for a in d["annotations"]], "every annotation is a crowd region"),
    ],
)
def test_a_split_with_nothing_to_learn_names_the_file_and_the_cause(tmp_path, capsys, edit, cause):
    data = coco_dict()
    edit(data)
    for a in data.get("annotations", []):  # crowd regions need RLE
        if a.get("iscrowd"):
            a["segmentation"] = rle(box_mask(0, 0, 4, 4))
    ann = make_coco(tmp_path / "c", "train2017", data)
    line = _train_error(capsys, ann, tmp_path)
    assert str(ann) in line and "no instance to train on in 2 images" in line and cause in line


def test_rle_whose_runs_do_not_cover_the_image_is_refused(tmp_path, capsys):
    for counts in ([5, 10, 3], "0`0"):  # uncompressed and compressed, both too short for 32x40
        data = coco_dict()
        data["annotations"][2]["segmentation"] = {"size": [32, 40], "counts": counts}
        ann = make_coco(tmp_path / str(len(str(counts))), "train2017", data)
        line = _train_error(capsys, ann, tmp_path)
        assert str(ann) in line and "annotations[2]" in line and "RLE run lengths add up to" in line
        assert "its image has 32x40" in line


def test_image_size_that_disagrees_with_the_file_is_refused(tmp_path, capsys):
    data = coco_dict()
    ann = make_coco(tmp_path / "c", "train2017", data)  # images 40 wide, 32 high
    data["images"][0]["height"], data["images"][0]["width"] = 40, 32  # the entry says the other way round
    (ann / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    line = _train_error(capsys, ann, tmp_path)
    assert "a.jpg is 40x32 pixels but the annotations say 32x40 (EXIF rotation?" in line


def test_a_size_mismatch_found_while_reading_is_one_line(tmp_path):
    from fastinst.data.loader import build_test_loader
    from fastinst.errors import DatasetError

    write_image(tmp_path / "a.jpg")
    record = {"file_name": str(tmp_path / "a.jpg"), "image_id": 5, "height": 10, "width": 10}
    with pytest.raises(DatasetError, match=r"image id 5: .*a.jpg is 40x32 pixels but the annotations say 10x10"):
        next(iter(build_test_loader([record], num_workers=0)))


def test_errors_raised_in_dataloader_workers_stay_one_line():
    from fastinst.cli import _one_line
    from fastinst.errors import DatasetError

    wrapped = DatasetError(
        "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise DatasetError(msg)\nfastinst.errors.DatasetError: a.json: bad thing\n'
    )
    assert _one_line(wrapped) == "a.json: bad thing"
    assert _one_line(DatasetError("plain")) == "plain"


@pytest.mark.parametrize(
    ("yaml_extra", "label", "expected"),
    [
        ("", "0 0.1 0.1 0.5 0.1 0.5", "img0.txt:1: odd number of coordinates (5)"),
        ("", "0 12 30 200 30 200 180 12 180", "img0.txt:1: coordinate 12 is outside 0..1 (YOLO labels are"),
        ("", "0 0.1 0.1", "img0.txt:1: a polygon needs at least 3 points, got 1"),
        ("nc: 3\n", None, "'nc: 3' disagrees with 'names', which lists 2 classes"),
    ],
)
def test_yolo_files_that_break_the_format(tmp_path, capsys, yaml_extra, label, expected):
    yaml = _yolo_set(tmp_path / "y", background=False)
    if label is not None:
        (tmp_path / "y" / "labels" / "train" / "img0.txt").write_text(label + "\n")
    yaml.write_text(yaml.read_text().replace("nc: 2\n", yaml_extra))
    line = _train_error(capsys, yaml, tmp_path)
    assert expected in line
    if "pixel" in expected or "outside" in expected:
        assert "look like pixel coordinates" in line


def test_out_of_range_settings_are_refused(tmp_path, capsys):
    yaml = _yolo_set(tmp_path / "y", background=False)
    line = _train_error(capsys, yaml, tmp_path, "solver.ims_per_batch=0")
    assert line == "error: solver.ims_per_batch=0: must be at least 1 and at most 65536"
    line = _train_error(capsys, yaml, tmp_path, "solver.steps=[50,20]")
    assert line == "error: solver.steps=[50, 20]: must be in increasing order"


def test_sixteen_bit_tiff_photos_train(tmp_path, capsys):
    """A COCO set of 16-bit gray TIFFs (a camera's raw range) trains and evaluates without a constant-image warning."""
    data = coco_dict()
    root = tmp_path / "t"
    for im in data["images"]:
        im["file_name"] = im["file_name"].replace(".jpg", ".tif")
        ramp = (np.arange(32 * 40, dtype=np.uint16).reshape(32, 40) * 3).astype("<u2")
        (root / "train2017").mkdir(parents=True, exist_ok=True)
        Image.frombytes("I;16", (40, 32), ramp.tobytes()).save(root / "train2017" / im["file_name"])
    ann = root / "annotations" / "instances_train2017.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(data))
    assert main(["train", "--data", str(root), "--output", str(tmp_path / "r"), *TINY, "solver.max_iter=1"]) == 0
    assert "constant image" not in capsys.readouterr().err


def test_classes_from_an_ultralytics_data_yaml(tmp_path, capsys):
    """`--classes data.yaml` reads `names:` (mapping or list, as Ultralytics writes them), not the file's lines."""
    from fastinst.factory import parse_classes

    yaml = _yolo_set(tmp_path / "y", background=False)  # names as an {index: name} mapping, with nc and path
    assert parse_classes(yaml) == (["person", "car"], None)
    listed = tmp_path / "listed.yaml"
    listed.write_text("path: .\ntrain: images\nval: images\nnames: [person, car]\n")
    assert parse_classes(listed) == (["person", "car"], None)
    out = tmp_path / "run"
    assert main(["train", "--data", str(yaml), "--output", str(out), *TINY, "solver.max_iter=1"]) == 0
    image = tmp_path / "y" / "images" / "val" / "img0.jpg"
    args = ["predict", str(image), "--model", "fastinst-demo", "--weights", str(out / "last.pth"), "--device", "cpu"]
    assert main([*args, "--classes", str(yaml), "--output", str(tmp_path / "pred"), "--save-json"]) == 0
    assert (tmp_path / "pred" / "img0.png").is_file()


def test_one_file_datasets_say_what_they_are(tmp_path, capsys):
    """A COCO json has one split (evaluation during training then scores the training images: said once); a single
    labelme file given as --data is read as labelme (here: one without labels, said in one line)."""
    ann = make_coco(tmp_path / "c", "train2017", coco_dict()) / "annotations" / "instances_train2017.json"
    args = ["--model", "fastinst-demo", "--device", "cpu", "solver.ims_per_batch=2", "solver.max_iter=1"]
    assert main(["train", "--data", str(ann), "--output", str(tmp_path / "r"), *args]) == 0
    assert "has one split: periodic evaluation scores the training images themselves" in capsys.readouterr().err
    labelme = tmp_path / "lm" / "photo.json"
    labelme.parent.mkdir()
    labelme.write_text(json.dumps({"version": "5.5.0", "flags": {}, "shapes": [], "imagePath": "photo.jpg",
                                   "imageData": None, "imageHeight": 32, "imageWidth": 40}))  # fmt: skip
    line = _train_error(capsys, labelme, tmp_path)  # a single labelme file loads as a one-image dataset (#22)
    assert line == f"error: {labelme.parent}: the labelme files hold no labels (only __ignore__/_background_ or no " + (
        "shapes)"
    )
