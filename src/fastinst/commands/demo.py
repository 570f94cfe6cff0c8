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

    from ..config import get_config, override_keys
    from ..data.registry import load_dataset
    from ..data.synthetic import ensure_synthetic_coco
    from ..engine.evaluator import predict_dataset, write_report
    from ..engine.training import fit
    from ..visualize import draw_instances

    start = time.time()
    clock = time.perf_counter  # one clock for the deadline and for the trainer that measures against it
    deadline = clock() + args.budget
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ensure_synthetic_coco(Path(args.data))
    overrides = [*(args.overrides or []), "input.filter_empty=true", f"solver.seed={args.seed}"]
    if args.iters:  # exactly this many iterations, the LR step at 80 %, the demo's warm-up unless one was given
        overrides += [f"solver.max_iter={args.iters}", f"solver.steps=[{int(args.iters * 0.8)}]"]
        if "solver.warmup_iters" not in override_keys(list(args.overrides or [])):
            overrides.append(f"solver.warmup_iters={get_config('fastinst-demo').solver.warmup_iters}")
    result = fit(
        "fastinst-demo",
        args.data,
        output=out,
        overrides=overrides,
        exist_ok=True,  # a demo run always starts fresh in its folder
        val_split="",  # evaluated below, once, with the overlays drawn
        device="cpu",
        deadline=None if args.iters else deadline,
        clock=clock,
        verbose=False,
    )
    cfg, model = result.cfg, result.model
    print(
        f"trained {result.iteration} iterations of {cfg.solver.ims_per_batch} images in "
        f"{time.time() - start:.0f} s (lr x{cfg.solver.gamma} from iteration {cfg.solver.steps[0]})"
    )

    val = load_dataset(args.data, split="val")
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
