"""A checkpoint from `fastinst train` on a custom dataset works unchanged everywhere, with its class names.

One tiny 2-class COCO dataset (category ids 3 "dog" and 7 "cat"), two training iterations of the demo variant, then
the same `last.pth` through `predict`, `eval`, `export`, `benchmark` and `fastinst.load` — with a `--model` that names
another variant where the command takes one (the checkpoint's config wins, and one line says so).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fastinst.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from makers import coco_dict, make_coco


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom")
    for split in ("train2017", "val2017"):
        make_coco(root, split, coco_dict())
    out = root / "run"
    args = ["--data", str(root), "--output", str(out), "--device", "cpu", "--val-split", ""]
    code = main(["train", "--model", "fastinst-demo", *args, "solver.max_iter=2", "solver.ims_per_batch=2"])
    assert code == 0
    return root, out / "last.pth"


def test_checkpoint_names_its_classes_in_load(trained):
    import fastinst

    _, ckpt = trained
    model = fastinst.load_model(ckpt, device="cpu")  # a checkpoint alone is enough
    assert model.names == ["dog", "cat"] and model.category_ids == [3, 7]
    predictor = fastinst.load("fastinst-d1-r50", weights=ckpt, device="cpu")  # the checkpoint wins over the name
    assert predictor.model.cfg.name == "fastinst-demo" and predictor.names == ["dog", "cat"]
    r = predictor.predict(np.zeros((40, 50, 3), np.uint8), score_threshold=0.0)[0]
    assert set(r.instance_names) <= {"dog", "cat"} and len(r) > 0


def test_predict_with_another_model_name_says_the_checkpoint_wins(trained, tmp_path, capsys):
    root, ckpt = trained
    options = ["--output", str(tmp_path), "--score-threshold", "0", "--save-json", "--device", "cpu"]
    code = main(["predict", str(root / "val2017"), "--model", "fastinst-d3-r101", "--weights", str(ckpt), *options])
    err = capsys.readouterr().err
    assert code == 0
    assert "is a fastinst-demo checkpoint with 2 classes; it is used instead of --model fastinst-d3-r101" in err
    entries = json.loads((tmp_path / "predictions.json").read_text())
    assert entries and {e["category_id"] for e in entries} <= {3, 7}  # the dataset's own ids
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a.png", "b.png"]


def test_eval_export_and_benchmark_take_the_same_checkpoint(trained, tmp_path, capsys):
    root, ckpt = trained
    weights = ["--model", "fastinst-demo", "--weights", str(ckpt)]
    assert main(["eval", *weights, "--data", str(root), "--output", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"dog", "cat"}
    onnx = tmp_path / "custom.onnx"
    assert main(["export", *weights, "--output", str(onnx)]) == 0
    from fastinst.export import OnnxModel

    assert OnnxModel(onnx).names == ["dog", "cat"]
    timing = ["--iters", "1", "--warmup", "0", "--device", "cpu", "--json", str(tmp_path / "bench.json")]
    assert main(["benchmark", *weights, *timing]) == 0


def test_eval_of_the_fast_path_in_bf16(trained, tmp_path, monkeypatch):
    """`fastinst eval --dtype bf16` runs the predictor's prepared model (BN folded, bf16) over the same split."""
    from fastinst.engine.predictor import Predictor

    seen = []
    detect = Predictor.detect
    monkeypatch.setattr(Predictor, "detect", lambda self, *a, **k: seen.append(self.dtype) or detect(self, *a, **k))
    root, ckpt = trained
    out = tmp_path / "eval_bf16"
    args = ["eval", "--model", "fastinst-demo", "--weights", str(ckpt), "--data", str(root), "--dtype", "bf16"]
    assert main([*args, "--output", str(out), "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"dog", "cat"} and 0.0 <= metrics["AP"] <= 100.0
    assert seen and set(seen) == {"bf16"}  # every val image went through the bf16 predictor
