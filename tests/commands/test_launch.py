"""The `--num-gpus` launcher hands each process this command line minus its own options, verbatim otherwise."""

from __future__ import annotations

import subprocess

import pytest

from fastinst.cli import main
from fastinst.commands._official import child_argv


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["train", "--num-gpus", "2", "--config-file", "c.yaml", "SOLVER.MAX_ITER", "7", "OUTPUT_DIR", "o"],
            ["train", "--config-file", "c.yaml", "SOLVER.MAX_ITER", "7", "OUTPUT_DIR", "o"],
        ),
        (
            ["--debug", "train", "--num-gpus=4", "--num-machines", "2", "--machine-rank=1", "--dist-url", "tcp://h:1"],
            ["--debug", "train"],
        ),
        (
            ["train", "--model", "m", "--num-gpus", "2", "--resume", "solver.max_iter=3"],
            ["train", "--model", "m", "--resume", "solver.max_iter=3"],
        ),
        (  # after `--` every word is a value, even one spelled like a launch option
            ["train", "--eval-only", "--num-gpus", "2", "--", "--num-gpus", "x=1"],
            ["train", "--eval-only", "--", "--num-gpus", "x=1"],
        ),
    ],
)
def test_child_argv_is_the_command_line_minus_the_launch_options(argv, expected):
    assert child_argv(argv) == expected


def test_num_gpus_starts_torch_distributed_run_with_the_original_words(tmp_path, monkeypatch, capsys):
    calls: list[list[str]] = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    words = ["train", "--model", "fastinst-demo", "--data", str(tmp_path / "d"), "--num-gpus", "2"]
    words += ["--device", "cpu", "--output", str(tmp_path / "o"), "--dist-url=auto", "solver.max_iter=1"]
    assert main(["--debug", *words]) == 0, capsys.readouterr().err
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"]
    start = cmd.index("fastinst") + 1
    assert cmd[start:] == ["--debug", *[w for w in words if w not in ("--num-gpus", "2", "--dist-url=auto")]]
