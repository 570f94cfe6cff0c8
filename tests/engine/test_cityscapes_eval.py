"""Cityscapes' instance metric: `evaluate_cityscapes` against cityscapesscripts' own evaluator
(`evalInstanceLevelSemanticLabeling.evaluateImgLists`, fed its prediction txt + mask PNG format) on generated
Cityscapes-layout data with every rule at work: several classes, instances under 100 px, group regions, void areas
(unlabeled, static, a caravan group), predictions exact / shifted / grown / duplicated / on void / on groups / false
positives, tied scores, a class with ground truth but no prediction and one with predictions but no ground truth."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from fastinst.data.cityscapes import CITYSCAPES_THINGS
from fastinst.data.registry import load_dataset
from fastinst.engine.cityscapes_eval import OVERLAPS, CityscapesInstanceEval, evaluate_cityscapes, gt_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from makers import write_image

H, W = 80, 120
CITIES = ("aachen", "bonn", "koeln", "ulm")
TRUCK, TRAIN = 27, 31  # truck: ground truth, never predicted (AP 0); train: predicted, never in ground truth (NaN)


def _rect(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[max(y0, 0) : y0 + h, max(x0, 0) : x0 + w] = True
    return m


def _make(root: Path, seed: int) -> dict[str, list[tuple[np.ndarray, int, float]]]:
    """Write gtFine/leftImg8bit for four images; -> predictions {gt file name: [(mask, label id, score), ...]}."""
    rng = np.random.default_rng(seed)
    preds: dict[str, list[tuple[np.ndarray, int, float]]] = {}

    def score() -> float:
        return float(rng.integers(1, 20)) / 20  # coarse: ties happen

    for n, city in enumerate(CITIES):
        ids = np.full((H, W), 7, np.int32)  # road
        ids[:10] = 0  # unlabeled (void) band
        ids[10:20, :12] = 4  # static (void)
        labels = [24, 25, 26, 26, 28, 32, 33, 24, 26, 25]
        for k in range(int(rng.integers(6, 10))):
            label = labels[k % len(labels)] if k != 1 or n != 1 else TRUCK
            h, w = int(rng.integers(5, 30)), int(rng.integers(5, 40))
            y, x = int(rng.integers(10, H - 12 - h)), int(rng.integers(0, W - w))
            kind = rng.random()
            value = label if kind < 0.15 else label * 1000 + k  # a group region, or instance k (0 included)
            ids[_rect(y, x, h, w)] = value
        ids[60:66, 100:112] = 29001  # a caravan instance: an ignored class, but not void (value != 29)
        ids[60:66, 88:96] = 29  # a caravan group: void
        if n == 0:
            ids[30:36, 40:46] = 24099  # a person of 36 px: under the minimum size
            ids[40:52, 60:80] = TRUCK * 1000 + 7
        ids[-12:] = 7  # a road band for false positives
        gt = root / "gtFine" / "val" / city / f"{city}_000000_0000{n}9_gtFine_instanceIds.png"
        gt.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids.astype(np.uint16)).save(gt)
        write_image(root / "leftImg8bit" / "val" / city / f"{city}_000000_0000{n}9_leftImg8bit.png", H, W, seed=n)

        out: list[tuple[np.ndarray, int, float]] = []
        for value in np.unique(ids):
            label = int(value) // 1000 if value >= 1000 else int(value)
            if label not in CITYSCAPES_THINGS or label == TRUCK:
                continue
            m = ids == value
            r = rng.random()
            if r < 0.25:
                out.append((m, label, score()))  # exact
            elif r < 0.5:
                out.append((np.roll(m, int(rng.integers(1, 4)), axis=int(rng.integers(0, 2))), label, score()))
            elif r < 0.65:
                grown = m | np.roll(m, 2, axis=0) | np.roll(m, 2, axis=1)
                out.append((grown, label, score()))
            elif r < 0.8:  # two predictions for one object: the lower-scored one is a false positive
                hi, lo = (0.95, 0.9) if rng.random() < 0.5 else (0.9, 0.95)
                out += [(m, label, hi), (np.roll(m, 1, axis=1), label, lo)]
            # else: missed
        for label in (24, 26, 33, TRAIN):  # false positives on the road band
            out.append((_rect(H - 10, int(rng.integers(0, W - 20)), 8, int(rng.integers(8, 20))), label, score()))
        out.append((_rect(1, 20 + 10 * n, 7, 12), 26, score()))  # entirely on void: ignored at every overlap
        # 60 % on void, 40 % on road: ignored up to overlap 0.55, a false positive from 0.6 on
        out.append((_rect(5, 60, 10, 10) & (_rect(4, 60, 6, 10) | _rect(68, 60, 4, 10)), 24, score()))
        band = _rect(5, 30, 5, 10) | _rect(H - 5, 30, 5, 10)  # half on void: exactly 0.5, a false positive at 0.5
        out.append((band, 25, score()))
        if n == 0:
            out.append((ids == 24099, 24, 0.95))  # exactly the small person: neither TP nor FP
        groups = [v for v in np.unique(ids) if v in CITYSCAPES_THINGS and v != TRUCK]
        if groups:  # a prediction on a group region: ignored
            out.append((ids == groups[0], int(groups[0]), score()))
        out.append((np.zeros((H, W), bool), 26, 0.5))  # empty: skipped
        preds[gt.name] = out
    if seed == 0:  # one image without any prediction (its objects are misses)
        preds[next(iter(preds))] = []
    return preds


def _reference(root: Path, preds: dict, tmp_path: Path, monkeypatch) -> dict:
    """cityscapesscripts' evaluator on its own file format: one txt per image, one mask PNG per prediction."""
    cs = pytest.importorskip("cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling")
    if not hasattr(np, "in1d"):  # removed in NumPy 2.4; the reference calls it on flat arrays
        monkeypatch.setattr(np, "in1d", lambda a, b: np.isin(np.ravel(a), b), raising=False)
    results = tmp_path / "results"
    results.mkdir()
    gts, txts = [], []
    for gt in sorted((root / "gtFine" / "val").glob("*/*_instanceIds.png")):
        stem = gt.name.removesuffix("_gtFine_instanceIds.png")
        lines = []
        for k, (mask, label, conf) in enumerate(preds[gt.name]):
            png = results / "masks" / f"{stem}_{k}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(png)
            lines.append(f"masks/{png.name} {label} {conf!r}\n")
        txt = results / f"{stem}_pred.txt"
        txt.write_text("".join(lines))
        gts.append(str(gt))
        txts.append(str(txt))
    args = copy.copy(cs.args)
    args.predictionPath = str(results.resolve())
    args.predictionWalk = None
    args.gtInstancesFile = str(tmp_path / "gtInstances.json")
    args.exportFile = str(tmp_path / "cs_result.json")
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    args.distanceAvailable = False
    # its debug dumps (gtInstances.json, matches.json) fail on NumPy 2 integers; they play no part in the numbers
    monkeypatch.setattr(cs, "writeDict2JSON", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    return cs.evaluateImgLists(txts, gts, args)["averages"]


def _ours(root: Path, preds: dict) -> dict:
    ds = load_dataset(root, split="val")
    by_name = {Path(im["file_name"]).name.removesuffix("_leftImg8bit.png"): im["id"] for im in ds.coco["images"]}
    results = []
    for gt_name, items in preds.items():
        image_id = by_name[gt_name.removesuffix("_gtFine_instanceIds.png")]
        for mask, label, conf in items:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            seg = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
            results.append({"image_id": image_id, "category_id": label, "segmentation": seg, "score": conf})
    return evaluate_cityscapes(results, ds, verbose=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_cityscapesscripts(tmp_path, monkeypatch, seed):
    root = tmp_path / "cityscapes"
    preds = _make(root, seed)
    ours = _ours(root, preds)
    theirs = _reference(root, preds, tmp_path, monkeypatch)
    assert ours["AP"] / 100 == pytest.approx(theirs["allAp"], abs=1e-6)
    assert ours["AP50"] / 100 == pytest.approx(theirs["allAp50%"], abs=1e-6)
    for name, cls in theirs["classes"].items():
        np.testing.assert_allclose(ours["per_class"][name] / 100, cls["ap"], atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(ours["per_class_AP50"][name] / 100, cls["ap50%"], atol=1e-6, equal_nan=True)
    # the data exercises the rules: a class at 0, one without ground truth, partial scores
    assert ours["per_class"]["truck"] == 0.0 and np.isnan(ours["per_class"]["train"])
    assert 5 < ours["AP"] < ours["AP50"] < 95


def _single(ids: np.ndarray, masks: list[np.ndarray], labels: list[int], scores: list[float]) -> np.ndarray:
    ev = CityscapesInstanceEval()
    ev.add_image(ids, masks, labels, scores)
    return ev.ap_matrix()


def test_hand_computed_cases():
    ids = np.full((H, W), 7, np.int32)
    ids[10:30, 10:30] = 26001  # a 400 px car
    ids[40:45, 40:45] = 26002  # 25 px: too small to count
    ids[:5] = 0  # void
    car = ids == 26001
    aps = _single(ids, [car], [26], [0.9])
    assert aps[2].tolist() == [1.0] * len(OVERLAPS)  # car row: one exact match at every overlap
    assert np.isnan(aps[0]).all()  # person: no ground truth
    # one TP (score 0.9) and one false positive scored above it (0.95)
    fp = np.zeros((H, W), bool)
    fp[60:70, 60:80] = True
    aps = _single(ids, [car, fp], [26, 26], [0.9, 0.95])
    # thresholds 0.9 (tp 1, fp 1: p 0.5, r 1), 0.95 (tp 0, fp 1: p 0, r 0), the artificial (p 1, r 0);
    # step widths (r[i-1] - r[i+1]) / 2 with r[-1] = r[0] and 0 past the end: 0.5, 0.5, 0
    assert aps[2, 0] == pytest.approx(0.5 * 0.5 + 0.0 * 0.5 + 1.0 * 0.0)
    # the same false positive on void is ignored; on the small car it is neither TP nor FP
    on_void = np.zeros((H, W), bool)
    on_void[0:5, 60:80] = True
    assert _single(ids, [car, on_void], [26, 26], [0.9, 0.95])[2, 0] == 1.0
    assert _single(ids, [car, ids == 26002], [26, 26], [0.9, 0.95])[2, 0] == 1.0
    # a car shifted to IoU 0.6: matched at 0.5 and 0.55 only
    shifted = np.roll(car, 5, axis=1)
    iou = (car & shifted).sum() / (car | shifted).sum()
    assert iou == pytest.approx(0.6)
    row = _single(ids, [shifted], [26], [0.9])[2]
    assert row.tolist() == [1.0 if t < iou else 0.0 for t in OVERLAPS]


def test_gt_file_and_errors(tmp_path):
    p = gt_file(tmp_path, "leftImg8bit/val/bonn/bonn_000000_000019_leftImg8bit.png")
    assert p == tmp_path / "gtFine/val/bonn/bonn_000000_000019_gtFine_instanceIds.png"
    from fastinst.errors import DatasetError

    with pytest.raises(DatasetError, match="not a Cityscapes"):
        gt_file(tmp_path, "images/x.jpg")
    root = tmp_path / "cs"
    preds = _make(root, 3)
    ds = load_dataset(root, split="val")
    wrong = {"size": [H + 1, W], "counts": mask_util.encode(np.zeros((H + 1, W), np.uint8, order="F"))["counts"]}
    bad = [{"image_id": 1, "category_id": 26, "segmentation": dict(wrong, counts=wrong["counts"].decode()), "score": 1}]
    with pytest.raises(DatasetError, match="81x120"):
        evaluate_cityscapes(bad, ds, verbose=False)
    assert preds


def test_eval_command_reports_the_cityscapes_metric(tmp_path, capsys):
    from fastinst.commands import evaluate as eval_cmd

    root = tmp_path / "cityscapes"
    preds = _make(root, 1)
    ds = load_dataset(root, split="val")
    exact = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 0.8}
        for a in ds.coco["annotations"]
        if not a["iscrowd"]
    ]
    (tmp_path / "pred.json").write_text(json.dumps(exact))
    parser = argparse.ArgumentParser()
    eval_cmd.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(
        ["eval", "--results", str(tmp_path / "pred.json"), "--data", str(root), "--output", str(out)]
    )
    assert eval_cmd.run(args) == 0
    printed = capsys.readouterr().out
    assert "Cityscapes AP 100.00 (AP50 100.00)" in printed
    block = json.loads((out / "metrics.json").read_text())["cityscapes"]
    assert block["AP"] == pytest.approx(100.0) and block["AP50"] == pytest.approx(100.0)
    assert set(block["per_class"]) == set(CITYSCAPES_THINGS.values())
    assert block["per_class"]["train"] is None  # NaN -> null
    assert preds
