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

from ..engine.training import prepare_train_split as prepare_train_split  # kept importable from here
from ._options import add_device, non_negative_int, positive_float, positive_int


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


def run(args: argparse.Namespace) -> int:
    """Parse (the official command line resolved into ours), then one call: the launcher, `evaluate_split` for
    `--eval-only`, or `fit`."""
    from ..engine import distributed as dist_utils
    from ..engine.training import fit
    from ._official import evaluate_only, launch, needs_launch, prepare_official

    prepare_official(args)  # --config-file, KEY VALUE pairs, dataset names -> --model/--data/... and key=value
    if needs_launch(args):
        return launch(args, getattr(args, "argv", None))
    if args.eval_only:
        return evaluate_only(args)
    result = fit(
        args.model,
        args.data,
        weights=args.weights,
        output=args.output,
        overrides=args.overrides or [],
        resume=args.resume,
        train_split=args.train_split,
        val_split=args.val_split,
        device=args.device,
        max_seconds=args.max_seconds,
    )
    if dist_utils.is_main():
        ap = result.metrics.get("AP")
        print(
            f"finished at iteration {result.iteration} in {result.metrics['seconds']:.0f} s"
            + (f"; mask AP {ap:.1f}" if ap is not None else "")
        )
    return 0
