"""`fastinst demo`: generate the synthetic shapes dataset, train the small demo FastInst on CPU, evaluate, draw.

The demo variant (`fastinst-demo`, see `fastinst.config._demo`) is FastInst with a half-width ResNet-18 backbone
trained from scratch and a 64-d one-layer decoder, trained on the 160-px synthetic shapes at 128-192 px, so that it
learns the four shape classes in minutes on two CPU cores. The training length is fitted to `--budget` while it runs
(`BudgetTrainer`): training ends `--budget` seconds after the start, then the val split is evaluated. The last line
printed is `mask AP <value> in <seconds> s`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..engine.trainer import Trainer


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train and evaluate the CPU demo on generated data (the README's main command)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--data", default="datasets/fastinst-synthetic", help="where the synthetic dataset lives")
    p.add_argument("--output", default="runs/demo", help="output folder")
    p.add_argument(
        "--budget",
        type=float,
        default=480.0,
        help="training ends this many seconds after the start, data generation included (default 480)",
    )
    p.add_argument("--iters", type=int, help="train exactly this many iterations (ignores --budget)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. solver.base_lr=3e-4")


class BudgetTrainer(Trainer):
    """A `Trainer` whose schedule is fitted to a time budget while it runs.

    Every 10 iterations until the LR step, `max_iter` is set to what the measured time per iteration (data loading
    included) lets finish by `deadline` (a value of `clock`, `time.perf_counter` unless another clock is given),
    capped at the configured `max_iter` and at least `min_iter`, and the LR step to `step_fraction` of it; after
    the step the schedule is fixed. Iterations 0-1 are not timed (warm-up); the probe starts at iteration 2.
    """

    def __init__(
        self,
        *args,
        deadline: float,
        step_fraction: float = 0.8,
        min_iter: int = 50,
        clock: Callable[[], float] = time.perf_counter,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.deadline, self.step_fraction, self.min_iter = deadline, step_fraction, min_iter
        self.clock = clock
        self.cap = self.cfg.solver.max_iter
        self._t0 = 0.0

    def step(self, batch: list[dict]) -> dict[str, float]:
        s, now = self.cfg.solver, self.clock()
        if self.iteration == 2:  # iterations 0-1 warm up the allocator and thread pools
            self._t0 = now
        elif self.iteration > 2 and self.iteration % 10 == 0 and self.iteration < s.steps[0]:
            per_iter = (now - self._t0) / (self.iteration - 2)
            # a clock that did not move (too coarse) measures nothing: then only the cap limits the run
            fit = self.iteration + int(max(self.deadline - now, 0.0) / per_iter) if per_iter > 0 else self.cap
            s.max_iter = min(self.cap, max(self.min_iter, fit))
            s.steps = (max(self.iteration, int(s.max_iter * self.step_fraction)),)
            if self.bar is not None:
                self.bar.total = s.max_iter
                self.bar.refresh()
        return super().step(batch)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from .. import build_model
    from ..config import apply_overrides, get_config
    from ..data.datasets import load_dataset
    from ..data.images import read_image
    from ..data.loader import build_train_loader
    from ..data.synthetic import ensure_synthetic_coco
    from ..engine.evaluator import COCOEvaluator, write_report
    from ..visualize import draw_instances

    start = time.time()
    clock = time.perf_counter  # one clock for the deadline and for the trainer that measures against it
    deadline = clock() + args.budget
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ensure_synthetic_coco(Path(args.data))
    train = load_dataset(args.data, split="train", filter_empty=True)
    val = load_dataset(args.data, split="val")
    cfg = apply_overrides(get_config("fastinst-demo"), list(args.overrides or []))
    cfg.model.num_classes = len(train.names)
    cfg.solver.seed = args.seed
    torch.manual_seed(args.seed)
    model = build_model(cfg)

    def loader(start_iter: int):
        return build_train_loader(
            train.records, cfg, cfg.solver.ims_per_batch, num_workers=cfg.solver.num_workers, start_iter=start_iter
        )

    for f in ("metrics.jsonl", "last.pth"):  # a demo run always starts fresh
        (out / f).unlink(missing_ok=True)
    if args.iters:
        cfg.solver.max_iter = args.iters
        cfg.solver.steps = (int(args.iters * 0.8),)
        trainer = Trainer(cfg, model, loader, out, progress=True)
    else:
        trainer = BudgetTrainer(cfg, model, loader, out, progress=True, deadline=deadline, clock=clock)
    trainer.train()
    print(
        f"trained {trainer.iteration} iterations of {cfg.solver.ims_per_batch} images in "
        f"{time.time() - start:.0f} s (lr x{cfg.solver.gamma} from iteration {cfg.solver.steps[0]})"
    )

    model.eval()
    evaluator = COCOEvaluator(val.coco, val.category_ids)
    overlays = out / "overlays"
    overlays.mkdir(exist_ok=True)
    for n, rec in enumerate(val.records):
        image = read_image(rec["file_name"])
        res = model.inference([image])[0]
        masks, scores, labels = (res["masks"].numpy(), res["scores"].numpy(), res["labels"].numpy())
        evaluator.process(rec["image_id"], masks, scores, labels)
        if n < 8:
            names = list(val.names)
            art = draw_instances(image, masks, labels, scores, names, score_threshold=0.5)
            Image.fromarray(art).save(overlays / f"{Path(rec['file_name']).stem}.png")
    metrics = evaluator.evaluate()
    write_report(metrics, out)
    print(f"overlays: {overlays}  curves: {out / 'curves.png'}  metrics: {out / 'metrics.json'}")
    print(f"mask AP {metrics['AP']:.1f} in {time.time() - start:.0f} s")
    return 0
