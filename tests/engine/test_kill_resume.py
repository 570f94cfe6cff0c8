"""A training process killed with SIGKILL at random moments (also mid-checkpoint) and resumed each time ends with
weights bit-identical to an uninterrupted run of the same length."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

SCRIPT = r"""
import os, sys, time, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from engine.test_trainer import tiny_cfg, stream
from fastinst import build_model
from fastinst.engine.trainer import Trainer
out, iters, slow = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "slow"
real_fsync = os.fsync
def announce_fsync(fd):  # lets the test kill us while a checkpoint is being written
    if slow:
        print("SAVING", flush=True)
        time.sleep(0.4)
    real_fsync(fd)
os.fsync = announce_fsync
torch.manual_seed(0)
cfg = tiny_cfg([f"solver.max_iter={{iters}}", "solver.checkpoint_period=1"])
Trainer(cfg, build_model(cfg), stream(2), out, resume=True, progress=False).train()
print("DONE", flush=True)
"""

ITERS = 8


def _start(script: Path, out: Path, slow: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), str(out), str(ITERS), "slow" if slow else "fast"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _kill_when(proc: subprocess.Popen, marker: str | None, delay: float) -> bool:
    """SIGKILL `proc` after `delay` s, or as soon as it prints `marker`; False if it finished first."""
    deadline = time.time() + (60 if marker else delay)
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        ready, _, _ = select.select([proc.stdout], [], [], 0.05)
        if ready and marker and marker in proc.stdout.readline():
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def test_sigkill_and_resume_is_bit_identical(tmp_path):
    script = tmp_path / "train_job.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parents[1])))
    ref = _start(script, tmp_path / "ref", slow=False)
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-2000:]

    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    for attempt in range(5):
        during_save = attempt % 2 == 1
        proc = _start(script, out, slow=during_save)
        if _kill_when(proc, "SAVING" if during_save else None, rng.uniform(3.0, 7.0)):
            kills += 1
    assert kills >= 3
    final = _start(script, out, slow=False)
    assert final.wait(timeout=600) == 0, final.stderr.read()[-2000:]

    a = torch.load(tmp_path / "ref" / "last.pth", weights_only=True)
    b = torch.load(out / "last.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == ITERS
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert not list(out.glob(".*.tmp*"))
