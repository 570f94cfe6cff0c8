"""What users found in the commands: `solver.epochs` next to `solver.max_iter`, `train --resume` with nothing to
resume, notes glued onto a progress bar, `benchmark --json` into a place it cannot write, `export` onto an existing
file and the exporter's own chatter, and docs/predict.md's missing import."""

from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path

import pytest
import torch

from fastinst.cli import main
from fastinst.config import ConfigError, apply_overrides, get_config, override_keys, schedule
from fastinst.errors import note

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from makers import coco_dict, make_coco

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "fastinst-demo", "--device", "cpu", "--val-split", "", "solver.ims_per_batch=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixes_data")
    make_coco(root, "train2017", coco_dict())
    return root


# -- 1. solver.epochs and solver.max_iter ----------------------------------------------------------------------------


def test_epochs_with_a_max_iter_that_changes_the_run_is_refused():
    demo = get_config("fastinst-demo")
    expected = r"^solver\.epochs=2 and solver\.max_iter=7 both set the run length; give one of them"
    for order in (["solver.epochs=2", "solver.max_iter=7"], ["solver.max_iter=7", "solver.epochs=2"]):
        with pytest.raises(ConfigError, match=expected):
            apply_overrides(demo, order)
    with pytest.raises(ConfigError, match=expected):  # epochs from a config file, max_iter on the command line
        apply_overrides(apply_overrides(demo, ["solver.epochs=2"]), ["solver.max_iter=7"])
    # epochs switched off, or either one alone: no conflict
    assert apply_overrides(demo, ["solver.epochs=2", "solver.epochs=0", "solver.max_iter=7"]).solver.max_iter == 7
    assert apply_overrides(demo, ["solver.max_iter=7"]).solver.max_iter == 7
    assert apply_overrides(demo, ["solver.epochs=2"]).solver.epochs == 2


def test_a_yaml_config_with_both_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: fastinst-demo\nsolver:\n  epochs: 3\n  max_iter: 500\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: solver\.epochs=3 and solver\.max_iter=500 both"):
        get_config(str(path))


def test_a_restated_max_iter_gives_way_to_epochs_with_a_note_naming_both():
    # an official config file restates the recipe's max_iter; a copied config holds the variant's own value
    overrides = ["solver.max_iter=3000", "solver.epochs=2"]
    cfg = apply_overrides(get_config("fastinst-demo"), overrides)
    out, notes = schedule(cfg, 10, override_keys(overrides))
    assert out.solver.max_iter == 3  # ceil(2 * 10 / 8)
    assert (
        notes[0]
        == "solver.epochs=2: 3 iterations (2 per epoch of 10 images at batch 8), in place of solver.max_iter=3000"
    )


def test_train_refuses_both_in_one_line_before_any_work(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--output", str(out), *TINY, "solver.epochs=2", "solver.max_iter=7"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: solver.epochs=2 and solver.max_iter=7 both set the run length; give one of them "
        "(solver.epochs=0 turns epochs off)\n"
    )
    assert not out.exists()


# -- 2. train --resume with nothing to resume ------------------------------------------------------------------------


def test_resume_with_nothing_to_resume_says_so_and_starts_a_new_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--output", str(out), "--resume", *TINY, "solver.max_iter=1"]) == 0
    err = capsys.readouterr().err
    assert f"note: nothing to resume in {out} (no last.pth there): starting a new run\n" in err
    assert torch.load(out / "last.pth", weights_only=True)["iteration"] == 1
    # with a checkpoint there, --resume continues it and says nothing of the kind
    assert main(["train", "--data", str(data), "--output", str(out), "--resume", *TINY, "solver.max_iter=2"]) == 0
    err = capsys.readouterr().err
    assert "nothing to resume" not in err and "resumed from iteration 1" in err


def test_resume_from_a_last_pth_that_is_not_a_file_is_one_line(data, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "last.pth").mkdir(parents=True)
    assert main(["train", "--data", str(data), "--output", str(out), "--resume", *TINY, "solver.max_iter=1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {out / 'last.pth'}: cannot resume: not a file"
    assert (out / "last.pth").is_dir() and sorted(p.name for p in out.iterdir()) == ["last.pth"]


# -- 3. notes while a progress bar is on screen ----------------------------------------------------------------------


def test_a_note_during_a_progress_bar_gets_its_own_line(monkeypatch):
    from tqdm import tqdm

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = tqdm(total=10, desc="train", file=sys.stderr, mininterval=0)
    bar.update(3)
    note("something the user should know")
    bar.update(1)
    bar.close()
    note("after the bar")
    lines = stream.getvalue().split("\n")
    mine = [line for line in lines if "something the user should know" in line]
    assert len(mine) == 1
    # on a terminal, a line shows what follows its last carriage return: the note alone, the bar cleared before it
    assert mine[0].split("\r")[-1] == "note: something the user should know"
    assert mine[0].split("\r")[-2].strip() == ""
    assert "train:  40%" in stream.getvalue().split("note: something")[1]  # the bar is drawn again below it
    assert lines[-2:] == ["note: after the bar", ""]


def test_a_note_without_a_bar_is_a_plain_line(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    note("plain", level="warning")
    assert stream.getvalue() == "warning: plain\n"


# -- 4. docs/predict.md says where Predictor comes from --------------------------------------------------------------


def test_predict_doc_imports_predictor_before_using_it():
    text = (REPO / "docs" / "predict.md").read_text()
    imported = text.find("from fastinst.engine.predictor import Predictor")
    first_use = text.find("Predictor(")
    assert imported != -1 and first_use != -1 and imported < first_use
    from fastinst.engine.predictor import Predictor  # the line in the doc works

    assert Predictor.__name__ == "Predictor"


# -- 5. benchmark --json into a place that cannot be written ---------------------------------------------------------


def test_benchmark_json_under_a_file_fails_before_any_work(tmp_path, capsys, monkeypatch):
    from fastinst.commands import benchmark

    ran = []
    monkeypatch.setattr(benchmark, "benchmark", lambda args: ran.append(args) or {})
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("mine")
    target = blocker / "out.json"
    assert main(["benchmark", "--model", "fastinst-demo", "--device", "cpu", "--json", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {target}: cannot write here: {blocker} is a file, not a folder\n"
    assert ran == [] and blocker.read_text() == "mine"
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert main(["benchmark", "--model", "fastinst-demo", "--device", "cpu", "--json", str(folder)]) == 2
    assert capsys.readouterr().err == f"error: {folder}: --json must be a file path, but this is an existing folder\n"
    assert ran == []


# -- 6. export onto an existing file, and the exporter's chatter -----------------------------------------------------


def test_export_refuses_to_replace_an_existing_file(tmp_path, capsys):
    pytest.importorskip("onnx")
    out = tmp_path / "mine.onnx"
    out.write_bytes(b"the user's own file")
    args = ["export", "--model", "fastinst-demo", "--size", "128", "160", "--output", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"error: {out}: already exists; pass --overwrite to replace it, or another --output"
    assert out.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.onnx"]  # no temporary file left either


def test_export_overwrite_replaces_it_and_the_exporter_says_nothing(tmp_path, capsys, caplog):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "mine.onnx"
    out.write_bytes(b"old")
    args = ["export", "--model", "fastinst-demo", "--size", "128", "160", "--output", str(out), "--overwrite"]
    caplog.set_level(logging.INFO)
    assert main(args) == 0
    captured = capsys.readouterr()
    assert out.read_bytes() != b"old" and out.stat().st_size > 1000
    lines = captured.out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"wrote {out} (128x160, opset 18") and "max abs diff" in lines[1]
    # (pytest takes the random-init warning itself; outside it is this one line)
    assert all(line.startswith("warning: fastinst-demo: no weights given") for line in captured.err.splitlines())
    chatter = [r for r in caplog.records if r.name.startswith(("onnxscript", "onnx_ir", "torch")) and r.levelno >= 30]
    assert chatter == []  # e.g. "Skipping constant folding for op Split with multiple outputs." (x6)
