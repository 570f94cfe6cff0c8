"""The one training entry: `fit(model, data)` builds everything a run needs from the data and trains.

    from fastinst.engine.training import fit          # also `fastinst.fit`
    run = fit("fastinst-d1-r50", "datasets/mine", weights="official.pth", overrides=["solver.epochs=12"])
    run.output, run.metrics["AP"]                      # the run folder (last.pth, metrics.jsonl, curves.png), metrics

`fastinst train`, `fastinst demo` and the official `train_net.py` command line (`commands/_official.py`) all call it:
the config from the data (classes, schedule), the training split as training uses it, the loader, the periodic
evaluator, the run folder (a folder that holds a run is never overwritten: a new run goes to OUTPUT2, OUTPUT3, ...),
torchrun's process group, then `Trainer` (or `BudgetTrainer` for a wall-clock `deadline`). Torch and the rest are
imported inside the functions, so that the commands' parsers can import this module cheaply.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..log import say

if TYPE_CHECKING:
    from torch import nn

    from ..config import Config


@dataclass
class TrainResult:
    """What `fit` returns: where the run is, its final metrics and the trained model."""

    output: Path  # the run folder: last.pth, metrics.jsonl, curves.png (and tensorboard/)
    metrics: dict  # iteration, seconds and the last evaluation's (AP, AP50, ...) when a split was evaluated
    cfg: Config  # the config trained: classes and schedule from the data (a budget run: the fitted schedule)
    model: nn.Module  # the trained model, on its training device

    @property
    def iteration(self) -> int:
        return int(self.metrics.get("iteration", 0))


def fit(
    model: str | Path | Config,
    data: str | Path,
    *,
    weights: str | Path | None = None,
    output: str | Path = "runs/train",
    overrides: Iterable[str] = (),
    resume: bool = False,
    exist_ok: bool = False,
    train_split: str = "train",
    val_split: str = "val",
    device: str = "auto",
    max_seconds: float | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> TrainResult:
    """Train `model` (a variant name/alias, a YAML config or a `Config`) on `data` (a COCO folder/JSON, a YOLO YAML,
    a short name such as `coco`); -> `TrainResult` (the run folder, the final metrics, the config, the model).

    * `weights`: initial weights, a FastInst checkpoint (class heads go over by class name) or an ImageNet backbone.
    * `overrides`: `section.key=value` config changes (`solver.max_iter=1000`, `solver.epochs=12`, ...).
    * `output`: the run folder. One that holds a run is never overwritten: the run goes to OUTPUT2, OUTPUT3, ...;
      `resume=True` continues the run in `output` from its `last.pth` (a note and a new run when there is none);
      `exist_ok=True` replaces the run in `output` (what `fastinst demo` does).
    * `val_split`: the split evaluated periodically and at the end ("" for none; a missing split is a note).
    * `device`: "auto", "cpu", "cuda", ...; under torchrun each process takes its own GPU.
    * `max_seconds`: stop (and save) after this much training time; `deadline`: a value of `clock`
      (`time.perf_counter`) at which training ends, the iteration count fitted to it while it runs (`BudgetTrainer`).
    * `verbose`: print the one line saying what trains where (rank 0).
    """
    import time

    from ..data.loader import build_train_loader
    from ..errors import note
    from ..factory import resolve_device
    from . import distributed as dist_utils
    from .trainer import Trainer

    kind = resolve_device(device)
    rank, world, local = dist_utils.init_distributed(kind.type)
    where = f"cuda:{local}" if kind.type == "cuda" and world > 1 else str(kind)
    wanted = Path(output)
    if resume:
        folder = wanted
    elif exist_ok:
        folder = wanted
        if dist_utils.is_main():
            for name in ("metrics.jsonl", "last.pth"):  # the run there is replaced, never continued or mixed into
                (folder / name).unlink(missing_ok=True)
    else:
        folder = dist_utils.broadcast_object(unused_run_folder(wanted))  # every process writes to rank 0's choice
        if folder != wanted:
            note(f"{output} holds a run; writing to {folder} (--resume continues {output})")
    cfg, net, train, val = build_training(
        model, data, weights=weights, overrides=list(overrides), train_split=train_split, val_split=val_split
    )
    per_rank = max(1, cfg.solver.ims_per_batch // world)
    if verbose and dist_utils.is_main():
        say(
            f"training {cfg.name} on {len(train.records)} images, {len(train.names)} classes, "
            f"{world} process(es) x {per_rank} images, {cfg.solver.max_iter} iterations -> {folder}",
            stdout=True,
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

    common: dict[str, Any] = {
        "device": where,
        "resume": resume,
        "evaluate_fn": make_evaluator(val) if val is not None else None,
        "max_seconds": max_seconds,
        "progress": progress,
    }
    trainer: Trainer
    if deadline is not None:
        from .budget import BudgetTrainer

        trainer = BudgetTrainer(cfg, net, loader, folder, deadline=deadline, clock=clock or time.perf_counter, **common)
    else:
        trainer = Trainer(cfg, net, loader, folder, **common)
    metrics = trainer.train()
    return TrainResult(output=folder, metrics=metrics, cfg=cfg, model=trainer.model)


def build_training(
    model: str | Path | Config,
    data: str | Path,
    *,
    weights: str | Path | None = None,
    overrides: list[str] | None = None,
    train_split: str = "train",
    val_split: str = "val",
):
    """-> (cfg, model, train dataset, val dataset | None) with the classes and the schedule taken from the data, the
    model built (seeded by `solver.seed`) and `weights` loaded into it."""
    import torch

    from ..backbone_weights import transfer_backbone
    from ..checkpoint import (
        checkpoint_class_names,
        checkpoint_classes,
        read_checkpoint,
        to_state_dict,
        transfer_checkpoint,
    )
    from ..config import Config, apply_overrides, get_config, override_keys, schedule
    from ..data.coco_classes import COCO_NAMES
    from ..data.registry import load_dataset
    from ..errors import FastInstError, note
    from ..factory import build_model

    overrides = list(overrides or [])
    base = copy.deepcopy(model) if isinstance(model, Config) else get_config(str(model))
    cfg = apply_overrides(base, overrides)
    train = prepare_train_split(data, train_split, cfg)
    cfg, notes = schedule(cfg, len(train.records), override_keys(overrides))
    for line in notes:
        note(line)
    if len(train.names) != cfg.model.num_classes:
        note(f"{data} has {len(train.names)} classes; setting model.num_classes={len(train.names)}")
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
    if val_split:
        try:
            val = load_dataset(data, split=val_split)
        except FastInstError as e:  # a missing val split only disables periodic evaluation
            note(f"no evaluation split ({e})")
    if val is not None and [r["file_name"] for r in val.records] == [r["file_name"] for r in train.records]:
        note(
            f"{data} has one split: periodic evaluation scores the training images themselves (--val-split '' "
            "skips it; a separate validation set gives an honest AP)"
        )
    torch.manual_seed(cfg.solver.seed)
    net = build_model(cfg)
    if weights:
        raw = read_checkpoint(weights)
        sd = to_state_dict(raw)
        if not sd:
            raise FastInstError(f"{weights}: holds no tensors (not a model checkpoint)")
        if any(k.startswith("sem_seg_head.") for k in sd):
            # refuses another variant; class heads go over by class name (`fastinst.classes`)
            names = checkpoint_class_names(raw) or (list(COCO_NAMES) if checkpoint_classes(sd) == 80 else None)
            say(transfer_checkpoint(net, sd, str(weights), names), stdout=True)
        else:
            say(transfer_backbone(net, sd, str(weights)), stdout=True)  # ImageNet weights: how many tensors it loaded
    return cfg, net, train, val


def prepare_train_split(data, split: str, cfg):
    """The training split of `data` as training uses it: unused categories dropped (so they do not become classes),
    background images (no instance) kept as negatives unless `input.filter_empty`, each said in one note; a split with
    nothing to learn from is a one-line error naming the file and the cause."""
    from ..data.core import drop_unused_categories, has_instance, unusable_for_training
    from ..data.registry import load_dataset
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
    """`folder` itself when it holds no run yet, else the first of folder2, folder3, ... that does not: a new run
    never overwrites a model or mixes its metrics into another run's."""
    candidate, n = folder, 1
    while holds_run(candidate):
        n += 1
        candidate = folder.with_name(f"{folder.name}{n}")
    return candidate


def make_evaluator(val, max_images: int | None = None):
    """A function model -> COCO mask metrics on `val` (sharded over DDP ranks, gathered on rank 0)."""
    from . import distributed as dist_utils
    from .evaluator import predict_dataset

    def evaluate(model) -> dict:
        evaluator = predict_dataset(model, val, max_images)
        return evaluator.evaluate() if dist_utils.is_main() else {}

    return evaluate
