#!/usr/bin/env python
"""Where one training step's time goes: data, network, targets, matcher, point sampling, losses, backward, optimizer.

    .venv/bin/python benchmarks/train_profile.py [--model fastinst-demo] [--image-size 160] [--iters 40] [--warmup 5]
        [--threads 0] [--workers 0] [--bf16] [--channels-last] [--json FILE] [key=value ...]

Trains `--model` on the synthetic shapes drawn at `--image-size` (the demo's data at its default; `--image-size 512
--model fastinst-d1-r50 solver.ims_per_batch=2 input.min_size_train=[512] input.max_size_train=512` for the D1-R50
row) through the real `Trainer.step`, and times each phase with wrappers around the functions that do it. Times are
exclusive: the matcher's own point sampling counts as matcher, the loss's point sampling (`uncertain_points` and
`point_sample` of the loss) as points; "network" is the model's forward minus everything it calls that has a row of
its own. "other" is the step minus the rows (learning-rate set-up, loss checks, the Python between).

Prints one table (ms per iteration and share) with the CPU model and flags; `--json` also writes it.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from fastinst.data.loader import build_train_loader
from fastinst.data.synthetic import DEFAULT_IMAGE_SIZE, ensure_synthetic_coco
from fastinst.engine.trainer import Trainer
from fastinst.engine.training import build_training
from fastinst.losses import criterion as criterion_module

PHASES = ("data", "network", "targets", "matcher", "points", "losses", "backward", "optimizer", "other")


class PhaseClock:
    """Exclusive wall time per phase: a wrapped call's time minus the wrapped calls inside it."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[list[float]] = []  # per open call: [time spent in wrapped children]

    def wrap(self, fn, phase: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.stack.append([0.0])
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                children = self.stack.pop()[0]
                self.totals[phase] += spent - children
                if self.stack:
                    self.stack[-1][0] += spent

        return timed


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
                return " ".join(f for f in wanted if f in flags)
    except OSError:
        pass
    return ""


def instrument(clock: PhaseClock, model, trainer: Trainer) -> None:
    """Wrap the functions of each phase (on the modules and objects the step reaches them through)."""
    model.forward = clock.wrap(model.forward, "network")
    model.targets = clock.wrap(model.targets, "targets")
    model.criterion.forward = clock.wrap(model.criterion.forward, "losses")
    matcher = model.criterion.matcher
    matcher.cost_matrix = clock.wrap(matcher.cost_matrix, "matcher")
    type(matcher).__call__ = clock.wrap(type(matcher).__call__, "matcher")
    criterion_module.proposal_match = clock.wrap(criterion_module.proposal_match, "matcher")
    criterion_module.uncertain_points = clock.wrap(criterion_module.uncertain_points, "points")
    criterion_module.point_sample = clock.wrap(criterion_module.point_sample, "points")
    trainer.optimizer.zero_grad = clock.wrap(trainer.optimizer.zero_grad, "optimizer")
    trainer.scaler.step = clock.wrap(trainer.scaler.step, "optimizer")
    torch.Tensor.backward = clock.wrap(torch.Tensor.backward, "backward")  # type: ignore[method-assign]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fastinst-demo")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--bf16", action="store_true", help="solver.amp_cpu_bf16=true (bf16 autocast on the CPU)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes (0: in the main process)")
    p.add_argument("--json", help="also write the row as JSON")
    p.add_argument("overrides", nargs="*", help="config key=value")
    args = p.parse_intermixed_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path("datasets") / f"profile-{args.image_size}"
    ensure_synthetic_coco(root, image_size=args.image_size, num_val=0)
    overrides = [*args.overrides, f"solver.num_workers={args.workers}"] + (
        ["solver.amp_cpu_bf16=true"] if args.bf16 else []
    )
    cfg, net, train, _ = build_training(args.model, str(root), overrides=overrides, val_split="")
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    batch_size = cfg.solver.ims_per_batch
    out = Path("runs") / "train_profile"
    trainer = Trainer(cfg, net, lambda start: build_train_loader(train.records, cfg, batch_size), out, progress=False)
    clock = PhaseClock()
    batches = iter(build_train_loader(train.records, cfg, batch_size, num_workers=args.workers))
    next_batch = clock.wrap(lambda: next(batches), "data")
    step = clock.wrap(trainer.step, "step")
    for _ in range(args.warmup):
        trainer.step(next(batches))
        trainer.iteration += 1
    instrument(clock, net, trainer)
    steps = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        batch = next_batch()
        step(batch)
        trainer.iteration += 1
        steps.append(time.perf_counter() - t0)
    total = sum(steps)
    rows = {k: clock.totals.get(k, 0.0) for k in PHASES if k != "other"}
    rows["other"] = total - sum(rows.values())
    ms = {k: 1e3 * v / args.iters for k, v in rows.items()}
    print(
        f"{args.model} · batch {batch_size} · {args.image_size}-px images · "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}{' · channels_last' if args.channels_last else ''} · "
        f"{torch.get_num_threads()} threads · torch {torch.__version__}"
    )
    print(f"CPU: {cpu_model()} ({cpu_flags()})")
    print(f"{'phase':<10} {'ms/it':>8} {'share':>6}")
    for k in PHASES:
        print(f"{k:<10} {ms[k]:8.1f} {100 * rows[k] / total:5.1f}%")
    median = 1e3 * statistics.median(steps)
    print(f"{'step':<10} {1e3 * total / args.iters:8.1f}  (median {median:.1f} ms, {args.iters / total:.2f} it/s)")
    if args.json:
        row = {
            "model": args.model,
            "batch": batch_size,
            "image_size": args.image_size,
            "bf16": args.bf16,
            "channels_last": args.channels_last,
            "threads": torch.get_num_threads(),
            "cpu": cpu_model(),
            "flags": cpu_flags(),
            "ms": {k: round(v, 2) for k, v in ms.items()},
            "it_per_s": round(args.iters / total, 3),
        }
        Path(args.json).write_text(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
