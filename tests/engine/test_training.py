"""`fit`, the one training entry: from Python it trains exactly what `fastinst train` trains, into a run folder that
never overwrites another run; `fastinst.fit` is the same function."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import fastinst
from fastinst.cli import main
from fastinst.engine.training import TrainResult, fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from makers import coco_dict, make_coco

TINY = ["solver.ims_per_batch=2", "solver.max_iter=2", "solver.log_period=1"]
QUIET = {"val_split": "", "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit_data")
    make_coco(root, "train2017", coco_dict())
    return root


def test_fit_from_python_trains_what_the_cli_trains(data, tmp_path, capsys):
    cli_out = tmp_path / "cli"
    words = ["--model", "fastinst-demo", "--data", str(data), "--output", str(cli_out), "--device", "cpu"]
    assert main(["train", *words, "--val-split", "", *TINY]) == 0
    capsys.readouterr()

    result = fastinst.fit("fastinst-demo", data, output=tmp_path / "py", overrides=TINY, **QUIET)
    assert isinstance(result, TrainResult)
    assert result.output == tmp_path / "py" and result.iteration == 2
    assert result.cfg.model.class_names == ("dog", "cat") and result.cfg.model.num_classes == 2  # from the data
    assert (
        "training fastinst-demo on 2 images, 2 classes, 1 process(es) x 2 images, 2 iterations"
        in capsys.readouterr().out
    )
    ours = torch.load(result.output / "last.pth", weights_only=True)
    theirs = torch.load(cli_out / "last.pth", weights_only=True)
    assert ours["iteration"] == theirs["iteration"] == 2
    assert ours["config"] == theirs["config"]
    for name, tensor in theirs["model"].items():  # the same run, bit for bit
        assert torch.equal(ours["model"][name], tensor), name
    trained = result.model.state_dict()
    assert all(torch.equal(trained[name], tensor) for name, tensor in ours["model"].items())


def test_fit_never_overwrites_a_run_and_resume_continues_it(data, tmp_path, capsys):
    out = tmp_path / "run"
    first = fit("fastinst-demo", data, output=out, overrides=TINY, **QUIET)
    before = (out / "last.pth").read_bytes()
    second = fit("fastinst-demo", data, output=out, overrides=TINY, **QUIET)
    assert (first.output, second.output) == (out, tmp_path / "run2")
    assert (out / "last.pth").read_bytes() == before
    assert f"{out} holds a run; writing to {tmp_path / 'run2'}" in capsys.readouterr().err
    more = [*TINY, "solver.max_iter=3"]
    third = fit("fastinst-demo", data, output=out, overrides=more, resume=True, **QUIET)
    assert third.output == out and third.iteration == 3
    assert "resumed from iteration 2" in capsys.readouterr().err
