"""`fastinst demo`: the schedule fitted to a time budget, and the whole command end to end (a few iterations)."""

from __future__ import annotations

import json
import re
import time

import torch
from torch import nn

from fastinst.cli import main
from fastinst.commands.demo import BudgetTrainer
from fastinst.config import apply_overrides, get_config


class _Sleepy(nn.Module):
    """A model whose every training step takes about `seconds`."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, batch):
        time.sleep(self.seconds)
        return {"loss": (self.w**2).sum()}


def _batches(start_iter: int):
    while True:
        yield [{}]


def test_budget_trainer_fits_iterations_and_lr_step_to_the_deadline(tmp_path):
    cfg = apply_overrides(
        get_config("fastinst-demo"),
        ["solver.max_iter=1000", "solver.steps=[800]", "solver.checkpoint_period=0", "solver.warmup_iters=0"],
    )
    trainer = BudgetTrainer(cfg, _Sleepy(0.01), _batches, tmp_path, progress=False, deadline=time.perf_counter() + 0.6)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert 20 <= trainer.iteration <= 62, trainer.iteration  # ~0.6 s / ~0.01 s, well below the cap of 1000
    assert cfg.solver.max_iter == trainer.iteration
    assert cfg.solver.steps[0] == int(0.8 * cfg.solver.max_iter)
    assert records[-1]["iter"] == trainer.iteration and records[-1]["time"] < 1.0  # training time, not plotting
    # the LR really dropped at the fitted step
    assert trainer.optimizer.param_groups[0]["lr"] == cfg.solver.base_lr * cfg.solver.gamma


def test_budget_trainer_keeps_the_configured_cap(tmp_path):
    cfg = apply_overrides(
        get_config("fastinst-demo"), ["solver.max_iter=40", "solver.steps=[32]", "solver.checkpoint_period=0"]
    )
    trainer = BudgetTrainer(cfg, _Sleepy(0.0), _batches, tmp_path, progress=False, deadline=time.perf_counter() + 60)
    trainer.train()
    assert trainer.iteration == 40 and cfg.solver.steps == (32,)


def test_demo_command_end_to_end(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    assert main(["demo", "--data", str(data), "--output", str(out), "--iters", "2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"mask AP \d+\.\d in \d+ s", last), last
    assert (data / "annotations" / "instances_val.json").is_file()
    for name in ("last.pth", "metrics.json", "metrics.jsonl", "curves.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "overlays").glob("*.png"))) == 8
