"""`fastinst train --model NAME --data DATA [--weights INIT] [--output DIR] [--resume] [key=value ...]`.

Single process: `fastinst train ...`. Many GPUs / nodes: `torchrun --nproc_per_node N -m fastinst train ...` (the global
batch `solver.ims_per_batch` is split over the processes). The 50-epoch COCO recipe is the default of every published
variant; `key=value` overrides change it (e.g. `solver.max_iter=90000 solver.steps=[80000]`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._options import add_device


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (single process or under torchrun)", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", required=True, help="variant name/alias or a YAML config file")
    p.add_argument("--data", required=True, help="dataset: COCO folder/JSON, YOLO YAML, cityscapes, ade20k ...")
    p.add_argument("--train-split", default="train", help="split to train on (default: train)")
    p.add_argument("--val-split", default="val", help="split for periodic evaluation ('' to skip)")
    p.add_argument("--weights", help="initial weights: a FastInst checkpoint or an ImageNet backbone file")
    p.add_argument(
        "--output",
        default="runs/train",
        help="output folder (checkpoints, metrics, curves); one that holds a run is never overwritten: a new run goes "
        "to OUTPUT2, OUTPUT3, ... (default runs/train)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT/last.pth if it exists (Ctrl-C or SIGTERM saves it after the current iteration)",
    )
    add_device(p)
    p.add_argument("--max-seconds", type=float, help="stop (and save) after this much training time")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. solver.max_iter=1000")


def build_training(args: argparse.Namespace):
    """-> (cfg, model, train dataset, val dataset | None) with the class count taken from the data."""
    import torch

    from ..checkpoint import load_backbone, read_state_dict, transfer_checkpoint
    from ..config import apply_overrides, get_config
    from ..data.datasets import load_dataset
    from ..errors import FastInstError
    from ..factory import build_model

    cfg = apply_overrides(get_config(args.model), list(args.overrides or []))
    train = load_dataset(args.data, split=args.train_split, filter_empty=True)
    if len(train.names) != cfg.model.num_classes:
        print(f"note: {args.data} has {len(train.names)} classes; setting model.num_classes={len(train.names)}")
        cfg.model.num_classes = len(train.names)
    cfg.model.class_names = tuple(str(n) for n in train.names)  # saved with the config in every checkpoint
    cfg.model.category_ids = tuple(int(i) for i in train.category_ids)
    val = None
    if args.val_split:
        try:
            val = load_dataset(args.data, split=args.val_split)
        except FastInstError as e:  # a missing val split only disables periodic evaluation
            print(f"note: no evaluation split ({e})")
    torch.manual_seed(cfg.solver.seed)
    model = build_model(cfg)
    if args.weights:
        sd = read_state_dict(args.weights)
        if any(k.startswith("sem_seg_head.") for k in sd):
            print(transfer_checkpoint(model, sd, args.weights))  # refuses another variant; names re-initialised heads
        else:
            load_backbone(model, args.weights)
    return cfg, model, train, val


def holds_run(folder: Path) -> bool:
    """Whether `folder` has a training run in it (a checkpoint or a metrics log)."""
    return (folder / "last.pth").exists() or (folder / "metrics.jsonl").exists()


def unused_run_folder(folder: Path) -> Path:
    """`folder` itself when it holds no run yet, else the first of folder2, folder3, ... that does not: a new `train`
    never overwrites a model or mixes its metrics into another run's."""
    candidate, n = folder, 1
    while holds_run(candidate):
        n += 1
        candidate = folder.with_name(f"{folder.name}{n}")
    return candidate


def make_evaluator(model_cfg, val, max_images: int | None = None):
    """A function model -> COCO mask metrics on `val` (sharded over DDP ranks, gathered on rank 0)."""
    from ..engine import distributed as dist_utils
    from ..engine.evaluator import predict_dataset

    def evaluate(model) -> dict:
        evaluator = predict_dataset(model, val, max_images)
        return evaluator.evaluate() if dist_utils.is_main() else {}

    return evaluate


def run(args: argparse.Namespace) -> int:
    from ..data.loader import build_train_loader
    from ..engine import distributed as dist_utils
    from ..engine.trainer import Trainer
    from ..factory import resolve_device

    kind = resolve_device(args.device)
    rank, world, local = dist_utils.init_distributed(kind.type)
    device = f"cuda:{local}" if kind.type == "cuda" and world > 1 else str(kind)
    output = Path(args.output) if args.resume else unused_run_folder(Path(args.output))
    if dist_utils.is_main() and output != Path(args.output):
        print(
            f"note: {args.output} holds a run; writing to {output} (--resume continues {args.output})", file=sys.stderr
        )
    cfg, model, train, val = build_training(args)
    per_rank = max(1, cfg.solver.ims_per_batch // world)
    if dist_utils.is_main():
        print(
            f"training {cfg.name} on {len(train.records)} images, {len(train.names)} classes, "
            f"{world} process(es) x {per_rank} images, {cfg.solver.max_iter} iterations -> {output}"
        )

    def loader(start_iter: int):
        return build_train_loader(
            train.records,
            cfg,
            per_rank,
            rank=rank,
            world=world,
            num_workers=cfg.solver.num_workers,
            start_iter=start_iter,
        )

    trainer = Trainer(
        cfg,
        model,
        loader,
        output,
        device=device,
        resume=args.resume,
        evaluate_fn=make_evaluator(cfg, val) if val is not None else None,
        max_seconds=args.max_seconds,
    )
    result = trainer.train()
    if dist_utils.is_main():
        ap = result.get("AP")
        print(
            f"finished at iteration {result['iteration']} in {result['seconds']:.0f} s"
            + (f"; mask AP {ap:.1f}" if ap is not None else "")
        )
    return 0
