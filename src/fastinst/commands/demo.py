"""`fastinst demo`: generate the synthetic shapes dataset, train the small demo FastInst on CPU, evaluate, draw.

The demo variant (`fastinst-demo`, see `fastinst.config._demo`) is FastInst with a ResNet-18 backbone trained from
scratch, a 64-d one-layer decoder and 256-px inputs, so that it learns the four shape classes in minutes on two CPU
cores. The training length is fitted to `--budget` seconds from the measured speed of the first steps. The last line
printed is `mask AP <value> in <seconds> s`.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train and evaluate the CPU demo on generated data (the README's main command)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="datasets/fastinst-synthetic", help="where the synthetic dataset lives")
    p.add_argument("--output", default="runs/demo", help="output folder")
    p.add_argument("--budget", type=float, default=540.0, help="training time budget in seconds (default 540)")
    p.add_argument("--iters", type=int, help="train exactly this many iterations (ignores --budget)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. solver.base_lr=3e-4")


def _fit_schedule(cfg, model, loader, budget: float, probe: int = 6) -> None:
    """Time a few steps on a copy of the model and size max_iter / LR steps to fit the budget."""
    from ..engine.trainer import Trainer
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        probe_cfg = copy.deepcopy(cfg)
        probe_cfg.solver.max_iter = probe
        probe_cfg.solver.checkpoint_period = 0
        trainer = Trainer(probe_cfg, copy.deepcopy(model), loader, tmp, progress=False)
        times = []
        for batch in loader(0):
            t = time.perf_counter()
            trainer.step(batch)
            times.append(time.perf_counter() - t)
            if len(times) >= probe:
                break
    per_step = sorted(times[1:])[len(times[1:]) // 2]
    iters = max(50, int(budget / (per_step * 1.15)))  # steps run ~15 % slower than the probe
    cfg.solver.max_iter = min(cfg.solver.max_iter, iters)
    cfg.solver.steps = (int(cfg.solver.max_iter * 0.8),)
    print(f"demo: {per_step * 1000:.0f} ms/step -> {cfg.solver.max_iter} iterations "
          f"(lr x{cfg.solver.gamma} at {cfg.solver.steps[0]})")


def run(args: argparse.Namespace) -> int:
    from .. import build_model
    from ..config import apply_overrides, get_config
    from ..data.datasets import load_dataset
    from ..data.images import read_image
    from ..data.loader import build_train_loader
    from ..data.synthetic import ensure_synthetic_coco
    from ..engine.evaluator import COCOEvaluator, write_report
    from ..engine.trainer import Trainer
    from ..visualize import draw_instances
    from PIL import Image

    start = time.time()
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
        return build_train_loader(train.records, cfg, cfg.solver.ims_per_batch, num_workers=cfg.solver.num_workers,
                                  start_iter=start_iter)

    if args.iters:
        cfg.solver.max_iter = args.iters
        cfg.solver.steps = (int(args.iters * 0.8),)
    else:
        _fit_schedule(cfg, model, loader, args.budget - (time.time() - start))
    for f in ("metrics.jsonl", "last.pth"):  # a demo run always starts fresh
        (out / f).unlink(missing_ok=True)
    trainer = Trainer(cfg, model, loader, out, progress=True)
    trainer.train()

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
