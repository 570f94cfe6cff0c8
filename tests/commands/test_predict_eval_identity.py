"""`fastinst predict --save-json` and `fastinst eval --results` agree on which image a prediction belongs to.

The COCO set here numbers its images 42, 7, 19 (a.jpg, b.jpg, c.jpg, listed in the json as b, c, a), so a prediction
file that numbered images 1, 2, 3 in file order would be refused or, worse, scored against other images. The same
weights go through `eval --model` (the reference: it runs the model over the dataset's own records) and through
`predict --save-json` + `eval --results`; both must give the same AP.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from fastinst.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from makers import make_yolo, mask_annotation, write_image

H, W = 48, 64
IDS = {"a.jpg": 42, "b.jpg": 7, "c.jpg": 19}


def _dataset(root: Path, model) -> Path:
    """`root/annotations/instances_val2017.json` + `root/val2017/{a,b,c}.jpg`, ids 42, 7, 19 listed as b, c, a.

    The ground truth is the model's own two best masks on each image (class 0 -> category 3 "dog", 1 -> 7 "cat",
    the dataset's ids in class order, as `eval --model` maps a model without stored ids), so the AP is high when
    every prediction meets its own image and drops when predictions meet other images."""
    from fastinst.data.images import read_image

    images, annotations = [], []
    for seed, name in enumerate(("b.jpg", "c.jpg", "a.jpg")):
        write_image(root / "val2017" / name, H, W, seed=seed)
        images.append({"id": IDS[name], "file_name": name, "height": H, "width": W})
        found = model.detect([read_image(root / "val2017" / name)], score_threshold=0.0, max_detections=100)[0]
        kept = [k for k in range(len(found["scores"])) if found["masks"][k].sum() >= 20][:2]
        for k in kept:
            category = (3, 7)[int(found["labels"][k])]
            annotations.append(mask_annotation(len(annotations) + 1, IDS[name], category, found["masks"][k].numpy()))
    data = {"images": images, "categories": [{"id": 3, "name": "dog"}, {"id": 7, "name": "cat"}]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data | {"annotations": annotations}))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(COCO root, 2-class demo weights, the `eval --model` AP, `predict --data` output folder)."""
    import fastinst
    from fastinst.config import get_config

    base = tmp_path_factory.mktemp("identity")
    cfg = get_config("fastinst-demo")
    cfg.model.num_classes = 2
    torch.manual_seed(0)
    weights = base / "demo2.pth"
    torch.save({"model": fastinst.build_model(cfg).state_dict()}, weights)
    with torch.inference_mode():
        root = _dataset(base / "coco", fastinst.load_model("fastinst-demo", weights, device="cpu"))
    reference = base / "eval_model"
    assert main(["eval", "--model", "fastinst-demo", "--weights", str(weights), "--data", str(root), "--device",
                 "cpu", "--output", str(reference)]) == 0  # fmt: skip
    ap = json.loads((reference / "metrics.json").read_text())["AP"]
    out = base / "predict"
    assert _predict(weights, out, root / "val2017", "--data", str(root)) == 0
    return root, weights, ap, out


def _predict(weights: Path, out: Path, *sources, extra: tuple[str, ...] = ()) -> int:
    argv = ["predict", "--model", "fastinst-demo", "--weights", str(weights), "--device", "cpu", "--dtype", "fp32"]
    argv += ["--score-threshold", "0", "--save-json", "--output", str(out), *map(str, sources), *extra]
    return main(argv)


def _eval_results(results: Path, data: Path, out: Path) -> int:
    return main(["eval", "--results", str(results), "--data", str(data), "--output", str(out)])


def _ap(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["AP"]


def test_predict_with_data_takes_the_dataset_ids_and_scores_as_eval_model(setup, tmp_path, capsys):
    root, _, reference_ap, out = setup
    entries = json.loads((out / "predictions.json").read_text())
    assert {Path(e["file_name"]).name: e["image_id"] for e in entries} == IDS  # not 1, 2, 3 in file order
    assert all(Path(e["file_name"]).is_file() for e in entries)  # the path as predicted
    assert len(entries) == 3 * 16 * 2 and {e["category_id"] for e in entries} == {3, 7}  # 16 queries x 2 classes
    assert reference_ap > 30.0  # the comparison below is not 0 == 0
    capsys.readouterr()
    assert _eval_results(out / "predictions.json", root, tmp_path / "eval") == 0
    assert "note:" not in capsys.readouterr().err  # the ids were right already: nothing to fix
    assert _ap(tmp_path / "eval") == pytest.approx(reference_ap, abs=0.05)


def test_shuffled_ids_are_fixed_by_file_name(setup, tmp_path, capsys):
    root, _, reference_ap, out = setup
    entries = json.loads((out / "predictions.json").read_text())
    rotate = {42: 7, 7: 19, 19: 42}  # every id names another existing image: silently wrong without file_name
    shuffled = [dict(e, image_id=rotate[e["image_id"]]) for e in entries]
    (tmp_path / "shuffled.json").write_text(json.dumps(shuffled))
    assert _eval_results(tmp_path / "shuffled.json", root, tmp_path / "eval") == 0
    err = capsys.readouterr().err
    assert f"note: matched {len(entries)} predictions to ground-truth images by file_name" in err
    assert _ap(tmp_path / "eval") == pytest.approx(reference_ap, abs=0.05)
    # the same file written from another folder (relative paths) still matches: val2017/a.jpg etc.
    moved = [dict(e, file_name=f"elsewhere/val2017/{Path(e['file_name']).name}") for e in shuffled]
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    assert _eval_results(tmp_path / "moved.json", root, tmp_path / "eval2") == 0
    assert _ap(tmp_path / "eval2") == pytest.approx(reference_ap, abs=0.05)
    # what the file_name prevents: the same shuffled ids without it are scored against the other images
    (tmp_path / "blind.json").write_text(
        json.dumps([{k: v for k, v in e.items() if k != "file_name"} for e in shuffled])
    )
    assert _eval_results(tmp_path / "blind.json", root, tmp_path / "eval3") == 0
    assert _ap(tmp_path / "eval3") < reference_ap - 10


def test_predictions_without_data_are_matched_at_eval(setup, tmp_path, capsys):
    root, weights, reference_ap, _ = setup
    out = tmp_path / "plain"
    categories = tmp_path / "categories.json"  # class names and ids only: no images, so no ids from it
    categories.write_text(json.dumps({"categories": [{"id": 3, "name": "dog"}, {"id": 7, "name": "cat"}]}))
    assert _predict(weights, out, root / "val2017", extra=("--classes", str(categories))) == 0
    entries = json.loads((out / "predictions.json").read_text())
    assert sorted({e["image_id"] for e in entries}) == [1, 2, 3]  # file order: the dataset's ids are unknown here
    capsys.readouterr()
    assert _eval_results(out / "predictions.json", root, tmp_path / "eval") == 0
    assert "matched 96 predictions to ground-truth images by file_name" in capsys.readouterr().err
    assert _ap(tmp_path / "eval") == pytest.approx(reference_ap, abs=0.05)


def test_refusals_are_one_line(setup, tmp_path, capsys):
    root, _, _, out = setup
    entries = json.loads((out / "predictions.json").read_text())
    cases = {
        "no_name.json": ([{k: v for k, v in e.items() if k != "file_name"} | {"image_id": 1} for e in entries],
                         ["1 image id(s) not in the ground truth", "fastinst predict --save-json --data"]),
        "unknown_file.json": ([dict(e, file_name="zzz.jpg") if e["image_id"] == 42 else e for e in entries],
                              ["1 file name(s) match no ground-truth image", "zzz.jpg"]),
        "unknown_cat.json": ([{k: v for k, v in e.items() if k != "category_name"} | {"category_id": 5}
                              for e in entries], ["category id(s) [5]"]),
        "unknown_name.json": ([dict(e, category_name="zebra") for e in entries],
                              ["none of its 2 classes (dog, cat) is among", "zebra"]),
        "twice.json": ([dict(e, file_name="x/b.jpg") if e["image_id"] == 42 else e for e in entries],
                       ["both match ground-truth image 7"]),
    }  # fmt: skip
    for name, (results, words) in cases.items():
        (tmp_path / name).write_text(json.dumps(results))
        assert _eval_results(tmp_path / name, root, tmp_path / "eval") == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert all(w in err for w in [name, *words]), err
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_images_outside_the_dataset_get_fresh_ids(setup, tmp_path, capsys):
    root, weights, _, _ = setup
    write_image(tmp_path / "extra" / "new.png", H, W, seed=5)
    out = tmp_path / "out"
    assert _predict(weights, out, root / "val2017" / "c.jpg", tmp_path / "extra" / "new.png", extra=("--data",
                    str(root / "annotations" / "instances_val2017.json"))) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "note: 1 image(s) are not in" in err and "new.png" in err and "42" in err
    ids = {Path(e["file_name"]).name: e["image_id"] for e in json.loads((out / "predictions.json").read_text())}
    assert ids == {"c.jpg": 19, "new.png": 43}


def test_coco_json_as_classes_gives_ids_too(setup, tmp_path):
    root, weights, _, _ = setup
    out = tmp_path / "out"
    classes = root / "annotations" / "instances_val2017.json"
    assert _predict(weights, out, root / "val2017" / "b.jpg", extra=("--classes", str(classes))) == 0
    entries = json.loads((out / "predictions.json").read_text())
    assert {e["image_id"] for e in entries} == {7} and {e["category_id"] for e in entries} <= {3, 7}


def test_yolo_set_through_the_same_path(setup, tmp_path, capsys):
    from fastinst.data.registry import load_dataset

    _, weights, _, _ = setup
    yaml, _ = make_yolo(tmp_path / "yolo")
    ds = load_dataset(yaml, "val")
    loader_ids = {Path(r["file_name"]).name: r["image_id"] for r in ds.records}
    assert loader_ids == {"empty.jpg": 1, "p.jpg": 2, "q.jpg": 3}  # assigned by the loader, sorted
    images = tmp_path / "yolo" / "images" / "val"
    out = tmp_path / "pred"
    # named in another order than the loader's: without --data they would be numbered q=1, empty=2, p=3
    assert _predict(weights, out, images / "q.jpg", images / "empty.jpg", images / "p.jpg", extra=("--data",
                    str(yaml))) == 0  # fmt: skip
    entries = json.loads((out / "predictions.json").read_text())
    assert {Path(e["file_name"]).name: e["image_id"] for e in entries} == loader_ids
    assert main(["eval", "--model", "fastinst-demo", "--weights", str(weights), "--data", str(yaml), "--device", "cpu",
                 "--output", str(tmp_path / "ref")]) == 0  # fmt: skip
    capsys.readouterr()
    assert _eval_results(out / "predictions.json", yaml, tmp_path / "eval") == 0
    assert "note:" not in capsys.readouterr().err
    assert _ap(tmp_path / "eval") == pytest.approx(_ap(tmp_path / "ref"), abs=0.05)


def test_image_index_rules(tmp_path):
    from fastinst.engine.results_file import ImageIndex

    images = [
        {"id": 5, "file_name": "a.jpg"},
        {"id": 6, "file_name": "sub/a.jpg"},
        {"id": 9, "file_name": "sub/b.jpg"},
    ]
    index = ImageIndex(images, tmp_path / "root")
    assert index.find(tmp_path / "root" / "a.jpg") == 5  # the file under the image root
    assert index.find(tmp_path / "root" / "sub" / ".." / "sub" / "a.jpg") == 6
    assert index.find("/elsewhere/sub/a.jpg") == 6  # the relative name as the path's trailing part
    assert index.find("C:\\data\\sub\\b.jpg") == 9  # either separator
    assert index.find("/elsewhere/b.jpg") == 9  # a unique base name
    assert index.find("/elsewhere/a.jpg") is None  # two images are called a.jpg: no guess
    assert index.find("c.jpg") is None and index.max_id == 9
