"""`fastinst eval`: a results json, a (fake, then real demo) model over a dataset split, and error exits."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastinst.commands import evaluate as eval_cmd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from makers import make_coco


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    eval_cmd.add_parser(parser.add_subparsers(dest="command"))
    argv = ["eval"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


def _gt_results(ds) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 1.0}
        for a in ds.coco["annotations"]
        if not a["iscrowd"]
    ]


@pytest.fixture()
def data(tmp_path):
    from fastinst.data.registry import load_dataset

    root = make_coco(tmp_path / "coco")
    return root, load_dataset(root)


def test_results_json(tmp_path, data, capsys):
    root, ds = data
    from fastinst.data.convert import to_coco_json

    # polygons in the GT: the results need RLE, so take them from an RLE conversion
    rle_gt = json.loads(to_coco_json(ds, tmp_path / "rle.json", rle=True).read_text())
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 0.9}
        for a in rle_gt["annotations"]
        if not a["iscrowd"]
    ]
    (tmp_path / "pred.json").write_text(json.dumps(results))
    out = tmp_path / "out"
    assert eval_cmd.run(_args(results=tmp_path / "pred.json", data=root, output=out)) == 0
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in printed
    assert "mask AP 100.00" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(100.0) and set(metrics["per_class"]) == {"dog", "cat"}
    assert (out / "pr_curve_iou50.png").is_file() and (out / "pr_curve_iou75.png").is_file()
    assert not list(out.glob(".*tmp*"))


class FakeModel(torch.nn.Module):
    """Returns each image's ground-truth masks, in dataset order."""

    def __init__(self, ds):
        super().__init__()
        self.queue = list(ds.records)
        self.num_classes = len(ds.names)

    def detect(self, images, score_threshold=0.0, max_detections=None):
        assert score_threshold == 0.0 and max_detections == 100  # evaluation: the official 100 detections
        from makers import decoded

        rec = self.queue.pop(0)
        assert images[0].shape == (rec["height"], rec["width"], 3) and images[0].dtype == np.uint8
        keep = [i for i, a in enumerate(rec["annotations"]) if not a["iscrowd"]]
        masks = decoded(rec)
        return [
            {
                "masks": torch.from_numpy(np.stack([masks[i] for i in keep]) if keep else np.zeros((0, 1, 1), bool)),
                "scores": torch.ones(len(keep)),
                "labels": torch.tensor([rec["annotations"][i]["category_id"] for i in keep], dtype=torch.long),
            }
        ]


def test_model_path_with_fake_model(tmp_path, data, monkeypatch, capsys):
    import fastinst.factory

    root, ds = data
    loaded = []
    monkeypatch.setattr(fastinst.factory, "load_model", lambda *a, **k: loaded.append(a) or FakeModel(ds))
    (tmp_path / "w.pth").write_bytes(b"x")
    out = tmp_path / "out"
    assert eval_cmd.run(_args(model="fastinst-demo", weights=tmp_path / "w.pth", data=root, output=out)) == 0
    assert loaded[0][0] == "fastinst-demo" and str(loaded[0][1]) == str(tmp_path / "w.pth")  # the one loader
    assert json.loads((out / "metrics.json").read_text())["AP"] == pytest.approx(100.0)
    assert len(json.loads((out / "predictions.json").read_text())) == 2
    capsys.readouterr()
    # --max-images 1 scores image 10 alone
    assert (
        eval_cmd.run(_args(model="fastinst-demo", weights=tmp_path / "w.pth", data=root, output=out, max_images=1)) == 0
    )
    assert json.loads((out / "metrics.json").read_text())["AP"] == pytest.approx(100.0)


def test_model_path_with_real_demo_model(tmp_path, data):
    import fastinst
    from fastinst.config import get_config

    root, _ = data
    cfg = get_config("fastinst-demo")
    cfg.model.num_classes = 2
    torch.manual_seed(0)
    torch.save({"model": fastinst.build_model(cfg).state_dict()}, tmp_path / "demo.pth")
    out = tmp_path / "out"
    assert (
        eval_cmd.run(_args(model="fastinst-demo", weights=tmp_path / "demo.pth", data=root, output=out, max_images=1))
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["AP"] <= 100


def test_checkpoint_for_another_class_count_is_refused_in_one_line(tmp_path, data, capsys):
    import fastinst
    from fastinst.cli import main

    root, _ = data
    torch.save({"model": fastinst.build_model("fastinst-demo").state_dict()}, tmp_path / "four.pth")  # 4 classes
    argv = ["eval", "--model", "fastinst-demo", "--weights", str(tmp_path / "four.pth"), "--data", str(root)]
    assert main([*argv, "--output", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "four.pth: the model has 4 classes" in err and "has 2" in err


def test_errors_exit_2(tmp_path, data, capsys):
    from fastinst.cli import main

    root, ds = data
    bad = [dict(r, image_id=999) for r in _gt_results(ds)]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["eval", "--results", str(tmp_path / "bad.json"), "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.json" in err and "999" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "--model", "fastinst-demo", "--data", str(root)]) == 2
    assert "--weights" in capsys.readouterr().err
    assert main(["eval", "--results", "x.json", "--data", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_more_instances_than_the_models_queries_are_said(demo_weights, tmp_path, capsys):
    """Issue #22: eval --model warns, as training does, when an image holds more instances than the model proposes
    (the demo's 16 queries): those beyond can never be found."""
    from makers import rle, write_image

    from fastinst.cli import main

    write_image(tmp_path / "cells" / "many.png", 50, 50, seed=3)
    anns = []
    for k in range(20):
        m = np.zeros((50, 50), bool)
        y, x = divmod(k, 5)
        m[y * 10 : y * 10 + 8, x * 10 : x * 10 + 8] = True
        anns.append({"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": rle(m), "area": 64.0,
                     "bbox": [x * 10, y * 10, 8, 8], "iscrowd": 0})  # fmt: skip
    data = tmp_path / "cells" / "cells.json"
    data.write_text(json.dumps({"images": [{"id": 1, "file_name": "many.png", "height": 50, "width": 50}],
                                "categories": [{"id": k, "name": f"c{k}"} for k in (1, 2, 3, 4)],
                                "annotations": anns}))  # fmt: skip
    argv = ["eval", "--model", "fastinst-demo", "--weights", demo_weights, "--data", str(data), "--device", "cpu"]
    assert main([*argv, "--output", str(tmp_path / "eval")]) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning: ")]
    assert any("more ground-truth instances than the model's 16 queries (most: 20 in many.png)" in x for x in warnings)
