"""Boundary AP: the boundary region against a brute-force chessboard distance and faster-coco-eval's C++ boundary,
and the whole evaluation against faster-coco-eval's `COCOeval_faster(iouType="boundary")` (an independent
implementation of the Boundary IoU API's rule) on generated masks with shifted / eroded / dilated predictions, several
images of different sizes, two categories and a crowd region."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util
from scipy import ndimage

from fastinst.commands import evaluate as eval_cmd
from fastinst.data.convert import to_coco_json
from fastinst.data.registry import load_dataset
from fastinst.engine.boundary import boundary_iou, dilation_pixels, mask_boundary
from fastinst.engine.coco_metrics import METRIC_NAMES
from fastinst.engine.evaluator import evaluate_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from makers import make_coco


def _fce():
    """faster-coco-eval (the `test` extra): the independent reference; tests that need it skip without it."""
    return pytest.importorskip("faster_coco_eval")


SIZES = {1: (60, 80), 2: (90, 120), 3: (48, 150), 4: (70, 70)}  # image id -> (H, W): dilation 2, 3, 3, 2


def _rle(mask: np.ndarray) -> dict:
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def _brute_boundary(mask: np.ndarray, ratio: float = 0.02) -> np.ndarray:
    """Mask pixels whose chessboard distance to the nearest non-mask pixel (the outside of the image included) is at
    most d: scipy's distance transform on the mask with a one-pixel zero frame."""
    h, w = mask.shape
    d = max(1, round(ratio * math.sqrt(h * h + w * w)))
    framed = np.pad(mask.astype(np.uint8), 1)
    dist = ndimage.distance_transform_cdt(framed, metric="chessboard")[1:-1, 1:-1]
    return mask & (dist <= d)


def _shapes(rng: np.random.Generator, h: int, w: int) -> list[np.ndarray]:
    """An ellipse, a rectangle touching the image border, a ring and a random blob."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ellipse = ((yy - cy) / (0.25 * h)) ** 2 + ((xx - cx) / (0.2 * w)) ** 2 <= 1
    rect = np.zeros((h, w), bool)
    rect[: h // 3, w // 2 :] = True
    ring = (np.hypot(yy - h / 2, xx - w / 3) < 0.3 * min(h, w)) & (np.hypot(yy - h / 2, xx - w / 3) > 0.12 * min(h, w))
    blob = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((h, w)), 3) > 0.52, iterations=1)
    return [ellipse, rect, ring, blob]


def test_boundary_region_matches_brute_force_and_faster_coco_eval():
    rng = np.random.default_rng(0)
    for h, w in [*SIZES.values(), (5, 7), (300, 20)]:
        for m in _shapes(rng, h, w):
            ours = mask_boundary(m, dilation_pixels(h, w))
            np.testing.assert_array_equal(ours, _brute_boundary(m))
            fce_mask = _fce().mask
            theirs = mask_util.decode(fce_mask.rleToBoundary(fce_mask.encode(np.asfortranarray(m.astype(np.uint8)))))
            np.testing.assert_array_equal(ours, theirs.astype(bool))
    assert not mask_boundary(np.zeros((10, 10), bool), 2).any()
    full = np.ones((20, 30), bool)  # a mask covering the image: its boundary is the frame of width d along the border
    b = mask_boundary(full, 3)
    assert b[:3].all() and b[:, -3:].all() and not b[3:-3, 3:-3].any()


def test_boundary_iou_values():
    h, w = SIZES[2]
    a = np.zeros((h, w), bool)
    a[20:60, 30:90] = True
    assert boundary_iou(a, a) == 1.0
    shifted = np.roll(a, 4, axis=1)
    ba, bs = _brute_boundary(a), _brute_boundary(shifted)
    assert boundary_iou(a, shifted) == pytest.approx((ba & bs).sum() / (ba | bs).sum(), abs=1e-12)
    # a small shift changes the boundary IoU much more than the mask IoU
    assert boundary_iou(a, shifted) < (a & shifted).sum() / (a | shifted).sum()
    assert boundary_iou(np.zeros((h, w), bool), np.zeros((h, w), bool)) == 0.0


def _dataset(rng: np.random.Generator) -> tuple[dict, list[dict]]:
    """GT over four images (categories 3 and 8, one crowd region) and scored predictions derived from it."""
    images, anns, dets = [], [], []
    for image_id, (h, w) in SIZES.items():
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        for k, m in enumerate(_shapes(rng, h, w)):
            cat = 3 if k % 2 == 0 else 8
            crowd = int(image_id == 2 and k == 3)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": _rle(m),
                    "area": float(m.sum()),
                    "bbox": [float(v) for v in mask_util.toBbox(_rle(m))],
                    "iscrowd": crowd,
                }
            )
            variants = [
                np.roll(m, int(rng.integers(1, 6)), axis=int(rng.integers(0, 2))),  # shifted
                ndimage.binary_erosion(m, iterations=int(rng.integers(1, 3))),  # eroded
                ndimage.binary_dilation(m, iterations=int(rng.integers(1, 4))),  # dilated
                m.copy() if k == 0 else np.roll(m, 9, axis=0),  # exact / far off
            ]
            for v in variants[: 2 + int(rng.integers(0, 3))]:
                if v.any():
                    dets.append({"image_id": image_id, "category_id": cat, "segmentation": _rle(v)})
        fp = np.zeros((h, w), bool)  # a false positive of each category
        fp[h - 10 : h - 2, 2:14] = True
        dets += [{"image_id": image_id, "category_id": c, "segmentation": _rle(fp)} for c in (3, 8)]
    for d in dets:
        d["score"] = float(rng.uniform(0.05, 1.0))
    cats = [{"id": 3, "name": "three"}, {"id": 8, "name": "eight"}]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def _faster_stats(gt: dict, dets: list[dict], tmp_path) -> np.ndarray:
    fce = _fce()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = fce.COCO(str(tmp_path / "gt.json"))
        coco_dt = coco_gt.loadRes([dict(d) for d in dets])
        ev = fce.COCOeval_faster(coco_gt, coco_dt, iouType="boundary", boundary_dilation_ratio=0.02)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12], dtype=np.float64)


def test_boundary_ap_equals_faster_coco_eval(tmp_path):
    gt, dets = _dataset(np.random.default_rng(1))
    metrics = evaluate_results(dets, gt, verbose=False, boundary=True)
    ours = np.array([metrics["boundary"][k] for k in METRIC_NAMES]) / 100
    theirs = _faster_stats(gt, dets, tmp_path)
    theirs = np.where(theirs < 0, np.nan, theirs)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, equal_nan=True)
    # a real difference from mask AP (the shifted predictions fail the boundary criterion more often)
    assert metrics["boundary"]["AP"] < metrics["AP"] - 1
    assert set(metrics["boundary"]["per_class"]) == {"three", "eight"}
    assert "boundary" not in evaluate_results(dets, gt, verbose=False)


def test_boundary_ap_of_the_ground_truth_is_100_and_crowd_rule(tmp_path):
    gt, _ = _dataset(np.random.default_rng(2))
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 0.9}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    crowd = next(a for a in gt["annotations"] if a["iscrowd"])
    inside = mask_util.decode(crowd["segmentation"]).astype(bool)
    inside = ndimage.binary_erosion(inside, iterations=2)  # inside the crowd region: ignored, not a false positive
    assert inside.any()
    dets = [*perfect, {"image_id": 2, "category_id": crowd["category_id"], "segmentation": _rle(inside), "score": 1.0}]
    metrics = evaluate_results(dets, gt, verbose=False, boundary=True)["boundary"]
    assert metrics["AP"] == pytest.approx(100.0)
    np.testing.assert_allclose(
        np.array([metrics[k] for k in METRIC_NAMES]) / 100,
        np.where((s := _faster_stats(gt, dets, tmp_path)) < 0, np.nan, s),
        atol=1e-6,
        equal_nan=True,
    )


def test_eval_command_boundary_flag(tmp_path, capsys):
    root = make_coco(tmp_path / "coco")
    rle_gt = json.loads(to_coco_json(load_dataset(root), tmp_path / "rle.json", rle=True).read_text())
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 0.9}
        for a in rle_gt["annotations"]
        if not a["iscrowd"]
    ]
    (tmp_path / "pred.json").write_text(json.dumps(results))
    parser = argparse.ArgumentParser()
    eval_cmd.add_parser(parser.add_subparsers(dest="command"))
    argv = ["eval", "--results", str(tmp_path / "pred.json"), "--data", str(root), "--output", str(tmp_path / "out")]
    assert eval_cmd.run(parser.parse_args([*argv, "--boundary"])) == 0
    printed = capsys.readouterr().out
    assert "boundary AP 100.00 (AP50 100.00, AP75 100.00)" in printed and "Cityscapes" not in printed
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["boundary"]["AP"] == pytest.approx(100.0) and metrics["boundary"]["dilation_ratio"] == 0.02
    assert eval_cmd.run(parser.parse_args(argv)) == 0
    assert "boundary" not in json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "boundary AP" not in capsys.readouterr().out
