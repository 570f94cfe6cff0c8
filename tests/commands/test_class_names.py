"""Issue #22: classes meet by name, not by id, in eval, predict `--data`/`--classes`, eval `--results` and fine-tuning.

The ground truth here is the named model's own best masks on each image, filed under the *name* of the class the model
gave them. One COCO file numbers bottle, chair, sofa 1, 2, 3; another numbers the same names 3, 1, 2 (listed in
another order, spelt in other cases). Matched by id the second file scores the right masks under the wrong classes;
matched by name both give one AP.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastinst.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from makers import mask_annotation, write_image

H, W = 48, 64
NAMES = ["bottle", "chair", "sofa"]
ORDERED = {"bottle": 1, "chair": 2, "sofa": 3}
PERMUTED = {"Chair": 1, "SOFA": 2, "bottle": 3}  # the same names under other ids, listed in another order


def _write_coco(path: Path, images: list[dict], found: dict[int, list[tuple[str, np.ndarray]]], ids: dict) -> Path:
    """A COCO json whose annotations are `found` (per image id: (class name, mask)), categories named as `ids`."""
    key = {name.lower(): cid for name, cid in ids.items()}
    pairs = [(image_id, key[name.lower()], mask) for image_id, items in found.items() for name, mask in items]
    anns = [mask_annotation(n + 1, image_id, cid, mask) for n, (image_id, cid, mask) in enumerate(pairs)]
    path.parent.mkdir(parents=True, exist_ok=True)
    cats = [{"id": cid, "name": name} for name, cid in ids.items()]
    path.write_text(json.dumps({"images": images, "categories": cats, "annotations": anns}))
    return path


def _best_of_each_class(out: dict, classes, names) -> list[tuple[str, np.ndarray]]:
    """The best detection of each class in `classes`, each from another query, its mask of 20 pixels or more."""
    picked, used = [], set()
    for c in classes:
        for k in range(len(out["scores"])):  # best first
            q = int(out["queries"][k])
            if int(out["labels"][k]) == c and q not in used and out["masks"][k].sum() >= 20:
                picked.append((names[c], out["masks"][k].numpy()))
                used.add(q)
                break
    return picked


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    """(named 3-class checkpoint, image folder, GT with ids 1-3, GT with the same names as 3-1-2, eval --model AP)."""
    import fastinst
    from fastinst.config import get_config, to_dict
    from fastinst.data.images import read_image

    base = tmp_path_factory.mktemp("names")
    cfg = get_config("fastinst-demo")
    cfg.model.num_classes = 3
    cfg.model.class_names, cfg.model.category_ids = tuple(NAMES), (1, 2, 3)
    torch.manual_seed(0)
    weights = base / "named.pth"
    torch.save({"model": fastinst.build_model(cfg).state_dict(), "config": to_dict(cfg)}, weights)  # as train saves
    model = fastinst.load_model(weights, device="cpu")
    images, found = [], {}
    for i in range(3):
        name = f"img{i}.jpg"
        write_image(base / "images" / name, H, W, seed=i)
        images.append({"id": i + 1, "file_name": name, "height": H, "width": W})
        with torch.inference_mode():
            out = model.detect([read_image(base / "images" / name)], score_threshold=0.0, max_detections=100)[0]
        found[i + 1] = _best_of_each_class(out, range(3), NAMES)
    assert len({n for items in found.values() for n, _ in items}) == 3  # every class: permuting matters
    ordered = _write_coco(base / "ordered.json", images, found, ORDERED)
    permuted = _write_coco(base / "permuted.json", images, found, PERMUTED)
    ref = base / "eval_ordered"
    assert _eval_model(weights, ordered, ref) == 0
    return weights, base / "images", ordered, permuted, _ap(ref)


def _eval_model(weights: Path, data: Path, out: Path) -> int:
    argv = ["eval", "--model", "fastinst-demo", "--weights", str(weights), "--data", str(data), "--device", "cpu"]
    return main([*argv, "--output", str(out)])


def _ap(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["AP"]


def _predict(weights: Path, images: Path, out: Path, *extra: str) -> list[dict]:
    argv = [
        "predict",
        "--model",
        "fastinst-demo",
        "--weights",
        str(weights),
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--score-threshold",
        "0",
    ]
    assert main([*argv, "--save-json", "--output", str(out), str(images), *extra]) == 0
    return json.loads((out / "predictions.json").read_text())


def test_same_names_under_other_ids_give_the_same_ap(named, tmp_path, capsys):
    weights, _, _, permuted, reference = named
    assert reference > 30.0  # the comparison is not 0 == 0
    capsys.readouterr()
    assert _eval_model(weights, permuted, tmp_path / "eval") == 0
    captured = capsys.readouterr()
    assert _ap(tmp_path / "eval") == pytest.approx(reference, abs=0.01)
    assert "classes matched by name have other ids in" in captured.err and "bottle 1->3" in captured.err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["per_class"]) <= {"Chair", "SOFA", "bottle"}  # the table under the dataset's own names
    assert metrics["run"]["dtype"] == "fp32" and metrics["run"]["device"] == "cpu"  # what ran is recorded
    assert "eval: fastinst-demo · cpu · torch · fp32" in captured.out


def test_predict_with_data_then_eval_results_matches(named, tmp_path):
    weights, images, _, permuted, reference = named
    entries = _predict(weights, images, tmp_path / "pred", "--data", str(permuted))
    by_name = {e["category_name"].lower(): e["category_id"] for e in entries}
    assert by_name == {k.lower(): v for k, v in PERMUTED.items() if k.lower() in by_name}  # the dataset's ids
    side = json.loads((tmp_path / "pred" / "predictions.run.json").read_text())
    assert side["run"]["dtype"] == "fp32" and {c["id"] for c in side["classes"]} == {1, 2, 3}
    assert main(["eval", "--results", str(tmp_path / "pred" / "predictions.json"), "--data", str(permuted),
                 "--output", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert _ap(tmp_path / "eval") == pytest.approx(reference, abs=0.01)


def test_results_with_the_models_own_ids_are_matched_by_name_at_eval(named, tmp_path, capsys):
    weights, images, _, permuted, reference = named
    entries = _predict(weights, images, tmp_path / "pred")  # no --data: the model's ids 1, 2, 3
    assert {e["category_id"] for e in entries} <= {1, 2, 3}
    capsys.readouterr()
    assert main(["eval", "--results", str(tmp_path / "pred" / "predictions.json"), "--data", str(permuted),
                 "--output", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert "other ids in the ground truth" in capsys.readouterr().err
    assert _ap(tmp_path / "eval") == pytest.approx(reference, abs=0.01)


def test_the_training_sets_own_file_with_unused_categories_works_as_classes(named, tmp_path, capsys):
    """labelme's COCO export lists every class of labels.txt; training keeps the used ones. That file as --classes:
    each class takes the file's id for its name."""
    weights, images, _, _, _ = named
    cats = [{"id": i + 1, "name": f"other{i}"} for i in range(21)]
    for cid, name in ((5, "bottle"), (9, "chair"), (18, "sofa")):
        cats[cid - 1]["name"] = name
    full = tmp_path / "annotations.json"
    full.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    entries = _predict(weights, images, tmp_path / "pred", "--classes", str(full))
    assert entries and {(e["category_name"], e["category_id"]) for e in entries} <= {
        ("bottle", 5),
        ("chair", 9),
        ("sofa", 18),
    }
    assert "error" not in capsys.readouterr().err


def test_a_plain_list_still_renames_a_models_classes(named, tmp_path):
    weights, images, _, _, _ = named
    entries = _predict(weights, images, tmp_path / "pred", "--classes", "cup,seat,couch")
    assert {e["category_name"] for e in entries} <= {"cup", "seat", "couch"}
    assert main(["predict", "--weights", str(weights), "--classes", "a,b", "--output", str(tmp_path / "x"),
                 str(images)]) == 2  # fmt: skip


def test_a_coco_model_evaluates_on_a_coco_subset(tmp_path, capsys):
    """An 80-class COCO checkpoint on a dataset listing 20 of COCO's categories (COCO's ids) and one class COCO lacks:
    the shared classes are scored, and one note names what was left out on each side."""
    import fastinst
    from fastinst.data.coco_classes import COCO_CATEGORY_IDS, COCO_NAMES
    from fastinst.data.images import read_image

    subset = dict(zip(COCO_NAMES[:20], COCO_CATEGORY_IDS[:20], strict=True))
    torch.manual_seed(0)
    coco80 = tmp_path / "coco80.pth"  # as the official releases: a state dict, no config; 80 classes = COCO's
    torch.save({"model": fastinst.build_model("fastinst-demo", ["model.num_classes=80"]).state_dict()}, coco80)
    model = fastinst.load_model("fastinst-demo", coco80, device="cpu")
    assert model.names == list(COCO_NAMES)
    images, found = [], {}
    for i in range(2):
        write_image(tmp_path / "images" / f"{i}.jpg", H, W, seed=10 + i)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": H, "width": W})
        with torch.inference_mode():
            out = model.detect([read_image(tmp_path / "images" / f"{i}.jpg")], 0.0, 100)[0]
        found[i + 1] = _best_of_each_class(out, range(0, 20, 4), COCO_NAMES)
    data = _write_coco(tmp_path / "ann.json", images, found, {**subset, "unicorn": 999})
    gt = json.loads(data.read_text())
    gt["annotations"].append(mask_annotation(99, 1, 999, np.ones((H, W), bool)))
    data.write_text(json.dumps(gt))
    capsys.readouterr()
    assert main(["eval", "--model", "fastinst-demo", "--weights", str(coco80), "--data", str(data), "--device",
                 "cpu", "--output", str(tmp_path / "eval")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "60 of the model's 80 classes are not in" in err and "their predictions are left out" in err
    assert "classes are not among the model's (unicorn): they are left out of the score" in err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "unicorn" not in metrics["per_class"] and len(metrics["per_class"]) == 20
    assert metrics["AP"] > 30.0  # its own masks, scored under COCO's ids


def test_fine_tuning_keeps_the_class_rows_of_classes_matched_by_name(named):
    """train --weights: the class-head rows of bottle and sofa follow their names to their new places."""
    import fastinst
    from fastinst.checkpoint import (
        CLASS_BIAS,
        checkpoint_class_names,
        read_checkpoint,
        to_state_dict,
        transfer_checkpoint,
    )
    from fastinst.config import get_config

    weights = named[0]
    raw = read_checkpoint(weights)
    sd = to_state_dict(raw)
    assert checkpoint_class_names(raw) == NAMES
    cfg = get_config("fastinst-demo")
    cfg.model.num_classes, cfg.model.class_names = 4, ("Sofa", "lamp", "bottle", "table")
    torch.manual_seed(1)
    model = fastinst.build_model(cfg)
    line = transfer_checkpoint(model, sd, weights, checkpoint_class_names(raw))
    assert "by class name: 2 of 4 classes kept (Sofa, bottle), 2 re-initialised" in line
    bias = model.state_dict()[CLASS_BIAS]
    assert torch.equal(bias[0], sd[CLASS_BIAS][2]) and torch.equal(bias[2], sd[CLASS_BIAS][0])
    assert torch.equal(bias[4], sd[CLASS_BIAS][3])  # "no object"
    same_cfg = get_config("fastinst-demo")
    same_cfg.model.num_classes, same_cfg.model.class_names = 3, ("sofa", "bottle", "chair")
    reordered = fastinst.build_model(same_cfg)
    line = transfer_checkpoint(reordered, sd, weights, NAMES)
    assert line.endswith("class-head rows reordered by class name") and line.startswith("transferred ")
    assert torch.equal(reordered.state_dict()[CLASS_BIAS][0], sd[CLASS_BIAS][2])
