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
from pathlib import Path

from ._options import non_negative_int, positive_float, positive_int


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
        type=positive_float,
        default=480.0,
        help="training ends this many seconds after the start, data generation included (default 480)",
    )
    p.add_argument("--iters", type=positive_int, help="train exactly this many iterations (ignores --budget)")
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. solver.base_lr=3e-4")


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from ..config import apply_overrides, get_config
    from ..data.datasets import load_dataset
    from ..data.loader import build_train_loader
    from ..data.synthetic import ensure_synthetic_coco
    from ..engine.budget import BudgetTrainer
    from ..engine.evaluator import predict_dataset, write_report
    from ..engine.trainer import Trainer
    from ..factory import build_model
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
    cfg.model.class_names = tuple(train.names)  # the checkpoint then names its classes
    cfg.model.category_ids = tuple(train.category_ids)
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

    overlays = out / "overlays"
    overlays.mkdir(exist_ok=True)

    def draw_first(n: int, rec: dict, image, found: dict) -> None:
        if n < 8:
            found = {k: v.cpu().numpy() for k, v in found.items()}
            art = draw_instances(image, found["masks"], found["labels"], found["scores"], list(val.names), 0.5)
            Image.fromarray(art).save(overlays / f"{Path(rec['file_name']).stem}.png")

    evaluator = predict_dataset(model, val, visit=draw_first)
    metrics = evaluator.evaluate()
    write_report(metrics, out)
    print(f"overlays: {overlays}  curves: {out / 'curves.png'}  metrics: {out / 'metrics.json'}")
    print(f"mask AP {metrics['AP']:.1f} in {time.time() - start:.0f} s")
    return 0
