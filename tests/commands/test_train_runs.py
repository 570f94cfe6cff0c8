"""Training runs are never lost: a second `train` into the same folder goes to a new one, and Ctrl-C / SIGTERM save
`last.pth` after the current iteration, which `--resume` continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastinst.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from makers import coco_dict, make_coco

TINY = ["--model", "fastinst-demo", "--device", "cpu", "--val-split", "", "solver.ims_per_batch=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs_data")
    make_coco(root, "train2017", coco_dict())
    return root


def test_a_second_run_never_overwrites_the_first(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--output", str(out), *TINY, "solver.max_iter=1"]) == 0
    first = (out / "last.pth").read_bytes()
    log = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--output", str(out), *TINY, "solver.max_iter=1"]) == 0
    assert f"{out} holds a run; writing to {tmp_path / 'run2'}" in capsys.readouterr().err
    assert (out / "last.pth").read_bytes() == first and (out / "metrics.jsonl").read_text() == log
    assert (tmp_path / "run2" / "last.pth").is_file()
    assert main(["train", "--data", str(data), "--output", str(out), *TINY, "solver.max_iter=1"]) == 0
    assert (tmp_path / "run3" / "last.pth").is_file()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_last_pth_and_resume_continues(data, tmp_path, sig):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastinst", "train", "--data", str(data), "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    long = ["solver.max_iter=100000", "solver.log_period=1", "solver.checkpoint_period=0"]
    proc = subprocess.Popen([*cmd, *TINY, *long], stderr=subprocess.PIPE, text=True, env=env)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # wait for a few iterations
        if metrics.is_file() and metrics.read_text().count('"iter"') >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    saved = torch.load(out / "last.pth", weights_only=True)
    stopped = int(saved["iteration"])
    assert stopped >= 3 and f"interrupted at iteration {stopped}: saved" in err
    events = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert events[-1] == {"event": "interrupted", "iter": stopped}
    resumed = subprocess.run(
        [*cmd, "--resume", *TINY, f"solver.max_iter={stopped + 1}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from iteration {stopped}" in resumed.stderr
    assert int(torch.load(out / "last.pth", weights_only=True)["iteration"]) == stopped + 1


def test_fine_tuning_says_what_it_transferred_and_refuses_another_variant(data, tmp_path, capsys):
    base = tmp_path / "base"
    assert main(["train", "--data", str(data), "--output", str(base), *TINY, "solver.max_iter=1"]) == 0
    three = coco_dict()
    three["categories"].append({"id": 9, "name": "bird"})  # another class count: the class heads cannot transfer
    three["annotations"].append(dict(three["annotations"][0], id=99, category_id=9))  # (a used category)
    make_coco(tmp_path / "three", "train2017", three)
    capsys.readouterr()
    weights = ["--weights", str(base / "last.pth")]
    args = [
        "--data",
        str(tmp_path / "three"),
        "--output",
        str(tmp_path / "tuned"),
        *weights,
        *TINY,
        "solver.max_iter=1",
    ]
    assert main(["train", *args]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("transferred "))
    total = len(torch.load(base / "last.pth", weights_only=True)["model"])
    assert line == (
        f"transferred {total - 8}/{total} tensors from {base / 'last.pth'}; class heads (8 tensors) by class name: "
        "2 of 3 classes kept (dog, cat), 1 re-initialised"
    )  # dog and cat keep what they learnt (issue #22); bird starts fresh

    assert (
        main(["train", "--model", "fastinst-d1-r50", "--data", str(data), "--output", str(tmp_path / "d1"), *weights])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert ": does not fit " in err[-1] and "it looks like" in err[-1]
    assert all(line.startswith("note: ") for line in err[:-1])  # the data notes before it, one line each
    assert not (tmp_path / "d1" / "last.pth").exists()
