"""`fastinst demo`: the schedule fitted to a time budget, and the whole command end to end.

`BudgetTrainer` reads time only through its `clock`, so these tests drive it with a fake clock that the model
advances by a fixed amount per training step: the fitted schedule is then exact arithmetic, whatever the load on
the machine. The command tests use a small generated dataset; nothing in them depends on how long anything takes.
"""

from __future__ import annotations

import json
import re
import time
import types

import pytest
import torch
from torch import nn

import fastinst.data.synthetic as synthetic
import fastinst.engine.budget as budget
from fastinst.cli import main
from fastinst.commands import demo
from fastinst.config import apply_overrides, get_config
from fastinst.engine.budget import BudgetTrainer


class FakeClock:
    """A clock that moves only when told to (`advance`), or by `tick` on every reading."""

    def __init__(self, start: float = 0.0, tick: float = 0.0):
        self.now, self.tick = start, tick

    def __call__(self) -> float:
        value = self.now
        self.now += self.tick
        return value

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Timed(nn.Module):
    """A model whose n-th training step (n = 0, 1, ...) takes `durations(n)` seconds of `clock` time."""

    def __init__(self, clock: FakeClock, durations):
        super().__init__()
        self.clock, self.durations, self.calls = clock, durations, 0
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, batch):
        self.clock.advance(self.durations(self.calls))
        self.calls += 1
        return {"loss": (self.w**2).sum()}


def _batches(start_iter: int):
    while True:
        yield [{}]


def _cfg(max_iter: int, step: int, *extra: str):
    base = [f"solver.max_iter={max_iter}", f"solver.steps=[{step}]", "solver.checkpoint_period=0"]
    return apply_overrides(get_config("fastinst-demo"), [*base, "solver.warmup_iters=0", *extra])


def _train(tmp_path, cfg, durations, deadline: float, **kwargs) -> BudgetTrainer:
    clock = FakeClock()
    trainer = BudgetTrainer(
        cfg, _Timed(clock, durations), _batches, tmp_path, progress=False, deadline=deadline, clock=clock, **kwargs
    )
    trainer.train()
    return trainer


def test_budget_trainer_fits_iterations_and_lr_step_to_the_deadline(tmp_path):
    """Steps 0-1 take 20 s (warm-up, not timed), then 1 s each; the deadline is at 140 s. At iteration 10 the clock
    reads 40 + 8 = 48 s and the probe (from iteration 2) measures 1 s per iteration, so 10 + (140 - 48) / 1 = 102
    iterations fit, with the LR step at int(0.8 * 102) = 81; every refit up to iteration 80 gives the same.
    After the step each iteration takes 7 s: the schedule must stay fixed (a refit at 90 would give 90)."""
    cfg = _cfg(1000, 800, "solver.log_period=1")
    trainer = _train(tmp_path, cfg, lambda n: 20.0 if n < 2 else (1.0 if n <= 80 else 7.0), deadline=140.0)
    assert trainer.iteration == 102 and cfg.solver.max_iter == 102
    assert cfg.solver.steps == (81,)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["iter"]: r["lr"] for r in records if "lr" in r}  # record k holds the LR of iteration k - 1
    assert sorted(lrs) == list(range(1, 103))
    base = lrs[1]
    assert all(lrs[k] == base for k in range(1, 82))  # iterations 0..80 at the base LR
    assert all(lrs[k] == base * cfg.solver.gamma for k in range(82, 103))  # from iteration 81 on, x gamma
    assert trainer.optimizer.param_groups[-1]["lr"] == base * cfg.solver.gamma


def test_budget_trainer_keeps_the_configured_cap(tmp_path):
    """1 s per iteration and 200 s of budget: 200 iterations would fit, the configured cap of 40 wins; the LR step
    is refitted to 0.5 x 40 (`step_fraction`)."""
    cfg = _cfg(40, 30)
    trainer = _train(tmp_path, cfg, lambda n: 1.0, deadline=200.0, step_fraction=0.5)
    assert trainer.iteration == 40 and cfg.solver.max_iter == 40
    assert cfg.solver.steps == (20,)


@pytest.mark.parametrize(("min_iter", "expected"), [(None, (50, 40)), (30, (30, 24))])
def test_budget_trainer_trains_at_least_min_iter(tmp_path, min_iter, expected):
    """A deadline already passed: every refit finds no time left, so the run is `min_iter` long (default 50)."""
    cfg = _cfg(1000, 800)
    kwargs = {} if min_iter is None else {"min_iter": min_iter}
    trainer = _train(tmp_path, cfg, lambda n: 1.0, deadline=0.0, **kwargs)
    assert (trainer.iteration, cfg.solver.max_iter) == (expected[0], expected[0])
    assert cfg.solver.steps == (expected[1],)


def test_budget_trainer_with_a_clock_that_does_not_move(tmp_path):
    """No measurable time per iteration (a coarse clock): nothing to fit, the configured cap decides."""
    cfg = _cfg(60, 800)
    trainer = _train(tmp_path, cfg, lambda n: 0.0, deadline=5.0)
    assert trainer.iteration == 60 and cfg.solver.steps == (48,)


@pytest.fixture
def small_synthetic(monkeypatch):
    """`ensure_synthetic_coco` with 16 train and 8 val images instead of the default 400/300 (keeps the test fast)."""
    real = synthetic.ensure_synthetic_coco
    monkeypatch.setattr(synthetic, "ensure_synthetic_coco", lambda root: real(root, num_train=16, num_val=8))


def _check_outputs(data, out):
    assert (data / "annotations" / "instances_val.json").is_file()
    for name in ("last.pth", "metrics.json", "metrics.jsonl", "curves.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "overlays").glob("*.png"))) == 8


def test_demo_command_end_to_end(tmp_path, capsys, small_synthetic):
    data, out = tmp_path / "data", tmp_path / "run"
    assert main(["demo", "--data", str(data), "--output", str(out), "--iters", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"trained 2 iterations of 8 images in \d+ s \(lr x0\.1 from iteration 1\)", lines[0]), lines
    assert re.fullmatch(r"mask AP \d+\.\d in \d+ s", lines[-1]), lines[-1]
    _check_outputs(data, out)


def test_demo_command_measures_the_budget_on_the_trainers_clock(tmp_path, monkeypatch, small_synthetic):
    """The budget path of the command: the deadline is `--budget` seconds after the start on the very clock the
    `BudgetTrainer` then measures with (a fake clock here, so the check is exact: first reading 1000 -> 1062)."""
    clock = FakeClock(start=1000.0, tick=1.0)
    monkeypatch.setattr(demo, "time", types.SimpleNamespace(perf_counter=clock, time=time.time))
    seen = {}

    class Built(Exception):
        pass

    class Probe(BudgetTrainer):
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            raise Built  # no need to train: what matters is what the command hands the trainer

    monkeypatch.setattr(budget, "BudgetTrainer", Probe)  # `demo.run` imports it from there when it runs
    with pytest.raises(Built):
        main(["demo", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run"), "--budget", "62"])
    assert seen["clock"] is clock and seen["deadline"] == 1062.0
