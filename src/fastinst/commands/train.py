"""`fastinst train --model NAME --data DATA [--weights INIT] [--output DIR] [--resume] [key=value ...]`.

Single process: `fastinst train ...`. Many GPUs / nodes: `torchrun --nproc_per_node N -m fastinst train ...` (the global
batch `solver.ims_per_batch` is split over the processes). The 50-epoch COCO recipe is the default of every published
variant; `key=value` overrides change it (e.g. `solver.max_iter=90000 solver.steps=[80000]`, or `solver.epochs=12`; a
`solver.max_iter` that changes the run length next to `solver.epochs` is refused: give one of them).

`--resume` continues the run in OUTPUT (not a new OUTPUT2) from its `last.pth`. With no `last.pth` there it says so
in a note and starts a new run in OUTPUT rather than failing: the official `train_net.py --resume` behaves so, and a
job script that always passes `--resume` then works for its first start and for every restart after preemption.

The official repository's command line works verbatim (docs/official.md): `fastinst train [--eval-only] --num-gpus 4
--config-file fastinst_R50_ppm-fpn_x1_576.yaml MODEL.WEIGHTS ckpt.pth`, with `--num-gpus`/`--num-machines` > 1
started through `torch.distributed.run` and the official dataset names looked up under $DETECTRON2_DATASETS.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._options import add_device, non_negative_int, positive_float, positive_int

PARSERS: dict[str, argparse.ArgumentParser] = {}  # the `train` parser, to rebuild a command line for the processes


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (single process or under torchrun)", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", help="variant name/alias or a YAML config file (or --config-file)")
    p.add_argument(
        "--data",
        help="dataset: COCO folder/JSON, YOLO YAML, cityscapes, ade20k, coco_2017_train ... (or DATASETS.TRAIN of "
        "--config-file)",
    )
    p.add_argument("--train-split", default="train", help="split to train on (default: train)")
    p.add_argument("--val-split", default="val", help="split for periodic evaluation ('' to skip)")
    p.add_argument("--weights", help="initial weights: a FastInst checkpoint or an ImageNet backbone file")
    p.add_argument(
        "--output",
        help="output folder (checkpoints, metrics, curves); one that holds a run is never overwritten: a new run goes "
        "to OUTPUT2, OUTPUT3, ... (default OUTPUT_DIR of --config-file, else runs/train)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUTPUT from its last.pth (Ctrl-C or SIGTERM saves it after the current iteration); "
        "with none there, a note says so and a new run starts in OUTPUT, as with the official train_net.py --resume",
    )
    add_device(p)
    p.add_argument("--max-seconds", type=positive_float, help="stop (and save) after this much training time")
    official = p.add_argument_group(
        "the official repository's train_net.py options (docs/official.md)",
        "`fastinst train` takes its command line verbatim: `fastinst train --num-gpus 4 --config-file "
        "fastinst_R50_ppm-fpn_x1_576.yaml MODEL.WEIGHTS ckpt.pth`",
    )
    official.add_argument("--config-file", metavar="FILE", help="an official FastInst YAML config (with _BASE_)")
    official.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate MODEL.WEIGHTS (--weights) on DATASETS.TEST (--data/--val-split) like `fastinst eval`",
    )
    official.add_argument(
        "--num-gpus",
        type=positive_int,
        default=1,
        help="processes per machine, started by torch.distributed.run (default 1)",
    )
    official.add_argument("--num-machines", type=positive_int, default=1, help="machines taking part (default 1)")
    official.add_argument(
        "--machine-rank", type=non_negative_int, default=0, help="this machine's rank, 0..N-1 (default 0)"
    )
    official.add_argument(
        "--dist-url",
        default="auto",
        help="tcp://HOST:PORT of machine 0 (needed with --num-machines > 1), env:// or auto (a free local port)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="config overrides: ours (solver.max_iter=1000) or the official KEY VALUE pairs (SOLVER.MAX_ITER 1000)",
    )
    PARSERS["train"] = p


def build_training(args: argparse.Namespace):
    """-> (cfg, model, train dataset, val dataset | None) with the class count taken from the data."""
    import torch

    from ..checkpoint import (
        checkpoint_class_names,
        checkpoint_classes,
        read_checkpoint,
        to_state_dict,
        transfer_backbone,
        transfer_checkpoint,
    )
    from ..config import apply_overrides, get_config, override_keys, schedule
    from ..data.coco_classes import COCO_NAMES
    from ..data.datasets import load_dataset
    from ..errors import FastInstError, note
    from ..factory import build_model

    overrides = list(args.overrides or [])
    cfg = apply_overrides(get_config(args.model), overrides)
    train = prepare_train_split(args.data, args.train_split, cfg)
    cfg, notes = schedule(cfg, len(train.records), override_keys(overrides))
    for line in notes:
        note(line)
    if len(train.names) != cfg.model.num_classes:
        note(f"{args.data} has {len(train.names)} classes; setting model.num_classes={len(train.names)}")
        cfg.model.num_classes = len(train.names)
    cfg.model.class_names = tuple(str(n) for n in train.names)  # saved with the config in every checkpoint
    cfg.model.category_ids = tuple(int(i) for i in train.category_ids)
    crowded = [(sum(a["iscrowd"] == 0 for a in r["annotations"]), r["file_name"]) for r in train.records]
    over = [c for c in crowded if c[0] > cfg.model.num_queries]
    if over:
        most = max(over)
        note(
            f"{len(over)} training image(s) have more instances than the model's {cfg.model.num_queries} queries "
            f"(most: {most[0]} in {most[1]}); at most {cfg.model.num_queries} per image can be learned or detected "
            "(model.num_queries sets it)",
            level="warning",
        )
    val = None
    if args.val_split:
        try:
            val = load_dataset(args.data, split=args.val_split)
        except FastInstError as e:  # a missing val split only disables periodic evaluation
            note(f"no evaluation split ({e})")
    if val is not None and [r["file_name"] for r in val.records] == [r["file_name"] for r in train.records]:
        note(
            f"{args.data} has one split: periodic evaluation scores the training images themselves (--val-split '' "
            "skips it; a separate validation set gives an honest AP)"
        )
    torch.manual_seed(cfg.solver.seed)
    model = build_model(cfg)
    if args.weights:
        raw = read_checkpoint(args.weights)
        sd = to_state_dict(raw)
        if not sd:
            raise FastInstError(f"{args.weights}: holds no tensors (not a model checkpoint)")
        if any(k.startswith("sem_seg_head.") for k in sd):
            # refuses another variant; class heads go over by class name (`fastinst.classes`)
            names = checkpoint_class_names(raw) or (list(COCO_NAMES) if checkpoint_classes(sd) == 80 else None)
            print(transfer_checkpoint(model, sd, args.weights, names))
        else:
            print(transfer_backbone(model, sd, args.weights))  # ImageNet weights: says how many tensors it loaded
    return cfg, model, train, val


def prepare_train_split(data, split: str, cfg):
    """The training split of `data` as training uses it: unused categories dropped (so they do not become classes),
    background images (no instance) kept as negatives unless `input.filter_empty`, each said in one note; a split with
    nothing to learn from is a one-line error naming the file and the cause."""
    from ..data.datasets import drop_unused_categories, has_instance, load_dataset, unusable_for_training
    from ..errors import DatasetError, note

    train = load_dataset(data, split=split)
    problem = unusable_for_training(train, f"{data} (split {split})")
    if problem:
        raise DatasetError(problem)
    dropped = drop_unused_categories(train)
    if dropped:
        shown = ", ".join(dropped[:8]) + (f" and {len(dropped) - 8} more" if len(dropped) > 8 else "")
        what = "category" if len(dropped) == 1 else "categories"
        note(f"{data}: {len(dropped)} {what} without annotations left out: {shown}")
    background = train.background_images()
    if background and cfg.input.filter_empty:
        train.records = [r for r in train.records if has_instance(r)]
        note(f"{data}: {background} background image(s) (no instance) left out (input.filter_empty=true)")
    elif background:
        note(
            f"{data}: {background} of {len(train.records)} training images have no instance and are kept as "
            "background (negatives); input.filter_empty=true leaves them out"
        )
    return train


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
    from ._official import evaluate_only, launch, needs_launch, prepare_official

    prepare_official(args)  # --config-file, KEY VALUE pairs, dataset names -> --model/--data/... and key=value
    if needs_launch(args):
        return launch(args)
    if args.eval_only:
        return evaluate_only(args)
    from ..data.loader import build_train_loader
    from ..engine import distributed as dist_utils
    from ..engine.trainer import Trainer
    from ..factory import resolve_device

    kind = resolve_device(args.device)
    rank, world, local = dist_utils.init_distributed(kind.type)
    device = f"cuda:{local}" if kind.type == "cuda" and world > 1 else str(kind)
    output = Path(args.output) if args.resume else unused_run_folder(Path(args.output))
    if output != Path(args.output):
        from ..errors import note

        note(f"{args.output} holds a run; writing to {output} (--resume continues {args.output})")
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
