"""`COCOEvaluator`: identical to pycocotools run by hand, AP 100 for the ground truth, a hand-computed AP, edge
cases."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fastinst.engine import evaluator as evaluator_mod
from fastinst.engine.coco_metrics import METRIC_NAMES
from fastinst.engine.evaluator import COCOEvaluator, evaluate_results, write_report
from fastinst.errors import DatasetError

H, W = 40, 48


def _rle(mask: np.ndarray) -> dict:
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": r["counts"].decode("ascii")}


def _box(x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _gt() -> tuple[dict, dict]:
    """Three images, categories 5 ("a") and 9 ("b"), a crowd region; -> (COCO dict, masks by annotation id)."""
    masks = {
        1: _box(2, 2, 20, 20),
        2: _box(24, 4, 46, 36),
        3: _box(0, 0, 10, 30),
        4: _box(12, 10, 40, 38),
        5: _box(30, 0, 48, 8),
        6: _box(5, 5, 25, 25),
    }
    owners = {1: (1, 5, 0), 2: (1, 9, 0), 3: (2, 5, 0), 4: (2, 5, 0), 5: (2, 9, 1), 6: (3, 9, 0)}
    anns = [
        {
            "id": i,
            "image_id": im,
            "category_id": c,
            "segmentation": _rle(masks[i]),
            "iscrowd": crowd,
            "area": float(masks[i].sum()),
            "bbox": [float(v) for v in mask_util.toBbox(_rle(masks[i]))],
        }
        for i, (im, c, crowd) in owners.items()
    ]
    images = [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in (1, 2, 3)]
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
    }, masks


def _noisy_predictions(seed: int = 0) -> dict[int, tuple]:
    """Per image: shifted GT boxes plus random boxes, random scores and labels (contiguous)."""
    rng = np.random.default_rng(seed)
    gt, masks = _gt()
    out = {}
    for im in (1, 2, 3):
        ms, ss, ls = [], [], []
        for a in gt["annotations"]:
            if a["image_id"] == im:
                ms.append(np.roll(masks[a["id"]], int(rng.integers(-3, 4)), axis=1))
                ss.append(float(rng.uniform(0.3, 1)))
                ls.append(0 if a["category_id"] == 5 else 1)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, W - 8)), int(rng.integers(0, H - 8))
            ms.append(_box(x0, y0, x0 + int(rng.integers(4, 20)), y0 + int(rng.integers(4, 20))))
            ss.append(float(rng.uniform(0, 0.8)))
            ls.append(int(rng.integers(0, 2)))
        out[im] = (np.stack(ms), np.array(ss, np.float32), np.array(ls))
    return out


def _pycocotools_direct(gt: dict, results: list[dict]) -> tuple[np.ndarray, str]:
    api = COCO()
    api.dataset = copy.deepcopy(gt)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        api.createIndex()
        ev = COCOeval(api, api.loadRes(copy.deepcopy(results)), "segm")
        ev.evaluate()
        ev.accumulate()
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        ev.summarize()
    return ev.stats, table.getvalue()


def test_identical_to_pycocotools(capsys):
    gt, _ = _gt()
    ev = COCOEvaluator(gt, [5, 9])
    for im, (m, s, lab) in _noisy_predictions().items():
        ev.process(im, m, s, lab)
    capsys.readouterr()
    metrics = ev.evaluate()
    printed = capsys.readouterr().out
    stats, table = _pycocotools_direct(gt, ev.results)
    assert printed == table and len(table.strip().splitlines()) == 12
    for name, value in zip(METRIC_NAMES, stats, strict=True):
        assert (math.isnan(metrics[name]) and value == -1) or metrics[name] == value * 100, name
    assert 0 < metrics["AP"] < 100
    assert set(metrics["per_class"]) == {"a", "b"}


def test_ground_truth_as_prediction_scores_100():
    gt, masks = _gt()
    ev = COCOEvaluator(gt)
    for im in (1, 2, 3):
        anns = [a for a in gt["annotations"] if a["image_id"] == im and not a["iscrowd"]]
        ev.process(
            im,
            torch.from_numpy(np.stack([masks[a["id"]] for a in anns])),
            torch.ones(len(anns)),
            torch.tensor([0 if a["category_id"] == 5 else 1 for a in anns]),
        )
    metrics = ev.evaluate(verbose=False)
    assert metrics["AP"] == metrics["AP50"] == metrics["AP75"] == metrics["AR100"] == 100.0
    assert metrics["per_class"] == {"a": 100.0, "b": 100.0}


def test_hand_computed_ap():
    """One class, two GT; ranked detections TP, FP, TP -> precision envelope 1 up to recall 0.5, then 2/3.

    Of the 101 recall thresholds, 0.00..0.50 (51) get 1 and 0.51..1.00 (50) get 2/3: AP = (51 + 50 * 2/3) / 101.
    """
    g1, g2 = _box(0, 0, 10, 10), _box(20, 20, 30, 30)
    gt = {
        "images": [{"id": 1, "file_name": "x.jpg", "height": H, "width": W}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": _rle(m),
                "iscrowd": 0,
                "area": float(m.sum()),
                "bbox": [0, 0, 1, 1],
            }
            for k, m in enumerate((g1, g2))
        ],
    }
    ev = COCOEvaluator(gt, [1])
    ev.process(1, np.stack([g1, _box(40, 0, 48, 6), g2]), np.array([0.9, 0.8, 0.7]), np.zeros(3, int))
    metrics = ev.evaluate(verbose=False)
    expected = (51 + 50 * 2 / 3) / 101 * 100
    for key in ("AP", "AP50", "AP75", "APs"):
        assert metrics[key] == pytest.approx(expected, abs=1e-9)
    assert math.isnan(metrics["APm"]) and math.isnan(metrics["APl"])  # no medium/large ground truth
    assert metrics["AR1"] == 50.0 and metrics["AR10"] == metrics["AR100"] == 100.0


def test_result_format_and_id_mapping():
    gt, masks = _gt()
    ev = COCOEvaluator(gt, [5, 9])
    ev.process(1, masks[2][None], np.array([0.5]), np.array([1]))
    (r,) = ev.results
    assert r["category_id"] == 9 and r["image_id"] == 1 and r["score"] == 0.5
    assert r["bbox"] == [24.0, 4.0, 22.0, 32.0]  # XYWH of the mask
    assert np.array_equal(mask_util.decode(r["segmentation"]).astype(bool), masks[2])
    json.dumps(ev.results)  # JSON-ready


def test_empty_predictions_give_zero():
    gt, _ = _gt()
    ev = COCOEvaluator(gt)
    for im in (1, 2, 3):
        ev.process(im, np.zeros((0, H, W), bool), np.zeros(0), np.zeros(0, int))
    metrics = ev.evaluate(verbose=False)
    assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0
    assert COCOEvaluator(gt).evaluate(verbose=False)["AP"] == 0.0  # nothing processed at all


def test_subset_of_images_is_scored_on_its_own():
    gt, masks = _gt()
    ev = COCOEvaluator(gt)
    ev.process(3, masks[6][None], np.ones(1), np.array([1]))
    # images 1 and 2 were not processed (pycocotools' tp / (tp + fp + eps) is a hair below 1 for one detection)
    assert ev.evaluate(verbose=False)["AP"] == pytest.approx(100.0, abs=1e-9)


def test_bad_inputs():
    gt, masks = _gt()
    ev = COCOEvaluator(gt)
    with pytest.raises(DatasetError, match="image id 42 is not in the ground truth"):
        ev.process(42, masks[1][None], np.ones(1), np.zeros(1, int))
    with pytest.raises(ValueError, match="original size"):
        ev.process(1, np.zeros((1, 8, 8), bool), np.ones(1), np.zeros(1, int))
    with pytest.raises(ValueError, match="labels outside"):
        ev.process(1, masks[1][None], np.ones(1), np.array([2]))
    results = [{"image_id": 77, "category_id": 5, "segmentation": _rle(masks[1]), "score": 1.0}]
    with pytest.raises(DatasetError, match=r"image id\(s\) not in the ground truth, e.g. \[77\]"):
        evaluate_results(results, gt)
    results[0].update(image_id=1, category_id=6)
    with pytest.raises(DatasetError, match=r"category id\(s\) \[6\]"):
        evaluate_results(results, gt)


def test_results_file_and_report(tmp_path):
    gt, _ = _gt()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    (tmp_path / "res.json").write_text(json.dumps(results))
    metrics = evaluate_results(tmp_path / "res.json", tmp_path / "gt.json", verbose=False)
    assert metrics["AP"] == 100.0
    write_report(metrics, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["AP"] == 100.0 and saved["per_class"] == {"a": 100.0, "b": 100.0}
    for name in ("pr_curve_iou50.png", "pr_curve_iou75.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(DatasetError, match=r"empty\.json: file is empty"):
        evaluate_results(tmp_path / "empty.json", gt)


def test_nan_written_as_null(tmp_path):
    write_report({"AP": 1.0, "APl": float("nan"), "per_class": {"x": float("nan")}}, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"AP": 1.0, "APl": None, "per_class": {"x": None}}


def test_gather_merges_ranks(monkeypatch):
    gt, masks = _gt()
    ev = COCOEvaluator(gt)
    ev.process(1, masks[1][None], np.ones(1), np.zeros(1, int))
    other = COCOEvaluator(gt)
    other.process(3, masks[6][None], np.ones(1), np.ones(1, int))
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)

    def all_gather_object(out, obj, group=None):
        out[0], out[1] = obj, (other.results, other.image_ids)

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    ev.gather()
    assert [r["image_id"] for r in ev.results] == [1, 3] and ev.image_ids == [1, 3]
    assert evaluator_mod.COCOEvaluator is COCOEvaluator


def test_more_instances_than_the_100_detections_are_said(capsys):
    """Issue #22: 125 nuclei in one image, predicted perfectly, score below 100 AP (COCO counts 100 detections per
    image); eval says why in one warning, as training does."""
    size, n = 80, 125
    masks = []
    for k in range(n):
        m = np.zeros((size, size), bool)
        y, x = divmod(k, 16)
        m[y * 5 : y * 5 + 4, x * 5 : x * 5 + 4] = True  # 125 separate 4x4 cells
        masks.append(m)
    gt = {
        "images": [{"id": 1, "file_name": "nuclei.png", "height": size, "width": size}],
        "categories": [{"id": 1, "name": "nucleus"}],
        "annotations": [
            {"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": _rle(m), "area": 16.0,
             "bbox": [0, 0, 1, 1], "iscrowd": 0}
            for k, m in enumerate(masks)
        ],
    }  # fmt: skip
    perfect = [
        {"image_id": 1, "category_id": 1, "segmentation": _rle(m), "score": 1.0 - k / 1000} for k, m in enumerate(masks)
    ]
    metrics = evaluate_results(perfect, gt, verbose=False)
    err = capsys.readouterr().err
    assert metrics["AP"] < 90.0  # 25 of the 125 can never be found
    (line,) = [x for x in err.splitlines() if x.startswith("warning: ")]
    assert "1 image(s) have more ground-truth instances than the 100 detections COCO AP counts" in line
    assert "most: 125 in nuclei.png" in line and "AP stays below 100" in line
    gt["annotations"] = gt["annotations"][:100]
    evaluate_results(perfect[:100], gt, verbose=False)
    assert "warning" not in capsys.readouterr().err  # 100 fit: nothing to say
