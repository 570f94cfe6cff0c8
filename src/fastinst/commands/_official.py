"""The official repository's command line for `fastinst train`: `python train_net.py [--eval-only] --num-gpus N
--config-file F KEY VALUE ...` (docs/official.md).

`prepare_official` turns it into our options before anything runs, so that `evaluate_only` (`fastinst eval`'s
`evaluate_split`) and training (`engine.training.fit`) see only --model/--data/--weights/--output and key=value
overrides. `--num-gpus` / `--num-machines` > 1 start the processes through PyTorch's own launcher, `python -m
torch.distributed.run`, each given this command line minus the launch options (`child_argv`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

LAUNCH_OPTIONS = ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url")  # the launcher's own: not passed on
_SCHEDULE = ("solver.max_iter", "solver.steps", "solver.warmup_iters")


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """-> (our `section.key=value` overrides, the official `KEY VALUE ...` words), each in command-line order."""
    from ..errors import FastInstError
    from ..official_config import is_official_key

    ours: list[str] = []
    official: list[str] = []
    i = 0
    while i < len(items):
        if "=" not in items[i] and is_official_key(items[i]):
            if i + 1 >= len(items):
                raise FastInstError(f"{items[i]} needs a value (KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth)")
            official += items[i : i + 2]
            i += 2
        else:
            ours.append(items[i])
            i += 1
    return ours, official


def prepare_official(args: argparse.Namespace) -> None:
    """Resolve `--config-file` and the official `KEY VALUE` pairs into our options, in place: `args.model` (a variant
    name) and `args.overrides` (key=value, the official settings first) give exactly the resolved config; MODEL.WEIGHTS,
    DATASETS.TRAIN/TEST and OUTPUT_DIR fill --weights, --data/--train-split/--val-split and --output where those were
    not given. Prints the note naming keys without meaning here. Also checks the launch options."""
    from ..config import get_config
    from ..errors import FastInstError, note
    from ..files import check_output
    from ..official_config import load_official_config

    for flag, value, least in (("--num-gpus", args.num_gpus, 1), ("--num-machines", args.num_machines, 1)):
        if value < least:
            raise FastInstError(f"{flag} must be at least {least}, got {value}")
    if not 0 <= args.machine_rank < args.num_machines:
        raise FastInstError(
            f"--machine-rank {args.machine_rank} must be in 0..{args.num_machines - 1} (--num-machines)"
        )
    ours, pairs = split_overrides(list(args.overrides or []))
    if args.config_file and args.model:
        raise FastInstError("--config-file and --model both name the model; give one of them")
    if args.config_file or pairs:
        base = get_config(args.model) if args.model else None
        official = load_official_config(args.config_file, pairs, base=base)
        if official.note():
            note(str(official.note()).removeprefix("note: "))
        for line in official.notes:
            note(line.removeprefix("note: "))
        args.model, fixed = our_options(official.cfg, set(official.fields), args.model)
        args.overrides = fixed + ours
        if args.weights is None and official.weights:
            if args.eval_only and official.weights.startswith("detectron2://ImageNetPretrained/"):
                raise FastInstError(
                    f"--eval-only: MODEL.WEIGHTS {official.weights} is the ImageNet backbone the config trains from; "
                    "pass MODEL.WEIGHTS /path/to/checkpoint_file (a FastInst checkpoint)"
                )
            args.weights = official_weights(official.weights)
        if args.output is None and official.output_dir:
            args.output = official.output_dir
        if args.device == "auto" and official.device:
            args.device = official.device
        if args.data is None:
            official_data(args, official.train_datasets, official.test_datasets)
    if args.model is None:
        raise FastInstError(
            "name the model: --model NAME, or --config-file FILE (an official config, docs/official.md)"
        )
    if args.data is None:
        raise FastInstError("name the data: --data DATA, or DATASETS.TRAIN / DATASETS.TEST in --config-file")
    if args.output is None:
        args.output = "runs/eval" if args.eval_only else "runs/train"
    if not args.eval_only:  # (eval-only: `fastinst eval` checks its own output)
        check_output(args.output, inputs=[p for p in (args.data, args.weights) if p], kind="dir")


def our_options(cfg, official_fields: set[str], model: str | None) -> tuple[str, list[str]]:
    """(variant name, key=value overrides) that rebuild `cfg` exactly: every field that differs from the variant's,
    and the schedule fields an official key set (so that training treats them as chosen, as detectron2 does: a
    shorter SOLVER.MAX_ITER does not rescale SOLVER.STEPS)."""
    import dataclasses
    import json

    from ..config import PUBLISHED, get_config

    name = model or (cfg.name if cfg.name in PUBLISHED else PUBLISHED[0])
    base = get_config(name)
    out = [] if cfg.name == base.name else [f"name={json.dumps(cfg.name)}"]
    for section in dataclasses.fields(cfg):
        ours, theirs = getattr(cfg, section.name), getattr(base, section.name)
        if not dataclasses.is_dataclass(ours):
            continue
        for f in dataclasses.fields(ours):
            key, value = f"{section.name}.{f.name}", getattr(ours, f.name)
            if (key in official_fields and key in _SCHEDULE) or value != getattr(theirs, f.name):
                out.append(f"{key}={json.dumps(value)}")
    return name, out


def official_weights(weights: str) -> str | None:
    """MODEL.WEIGHTS as a local file: `detectron2://` and http(s) URLs are downloaded into the cache (once)."""
    from ..errors import FastInstError
    from ..official_config import weights_location

    where = weights_location(weights)
    if where.startswith(("http://", "https://")):
        from ..hub import fetch

        return str(fetch(where))
    if "://" in where:
        raise FastInstError(f"MODEL.WEIGHTS {weights}: fastinst reads local files and http(s) URLs")
    if not Path(where).expanduser().is_file():
        raise FastInstError(
            f"MODEL.WEIGHTS {weights}: no such file; download the weights the official README links (docs/official.md) "
            "and pass MODEL.WEIGHTS PATH, or MODEL.WEIGHTS '' to start from random weights"
        )
    return where


def official_data(args: argparse.Namespace, train: tuple[str, ...], test: tuple[str, ...]) -> None:
    """--data and the splits from DATASETS.TRAIN / DATASETS.TEST (`coco_2017_train`, ... under $FASTINST_DATASETS or
    $DETECTRON2_DATASETS): training uses TRAIN and evaluates on TEST when it is a split of the same dataset;
    --eval-only uses TEST."""
    from ..data.registry import OFFICIAL_NAMES, official_dataset
    from ..errors import FastInstError, note

    def place(key: str, names: tuple[str, ...]) -> tuple[str, str] | None:
        if not names:
            return None
        if len(names) > 1:
            raise FastInstError(f"DATASETS.{key} names {len(names)} datasets ({', '.join(names)}); fastinst uses one")
        found = official_dataset(names[0])
        if found is None:
            if Path(names[0]).exists():
                return names[0], ""
            raise FastInstError(
                f"DATASETS.{key} {names[0]!r}: not a dataset name fastinst knows ({', '.join(OFFICIAL_NAMES)}); "
                "pass --data DATA"
            )
        return str(found[0]), found[1]

    train_place, test_place = place("TRAIN", train), place("TEST", test)
    if not test and not args.eval_only:
        args.val_split = ""  # DATASETS.TEST () : no evaluation
    if args.eval_only:
        if test_place is None:
            return
        args.data, split = test_place
        args.val_split = split or args.val_split
        return
    if train_place is None:
        return
    args.data, split = train_place
    args.train_split = split or args.train_split
    if test_place is not None and test_place[0] == train_place[0]:
        args.val_split = test_place[1] or args.val_split
    elif test_place is not None:
        note(f"DATASETS.TEST {test[0]} is not a split of {train[0]}'s dataset: no evaluation during training")
        args.val_split = ""


def needs_launch(args: argparse.Namespace) -> bool:
    """Whether this call starts the processes (--num-gpus / --num-machines > 1, not already under torchrun)."""
    import os

    return (args.num_gpus > 1 or args.num_machines > 1) and "WORLD_SIZE" not in os.environ


def rendezvous(dist_url: str, machines: int) -> tuple[str, int]:
    """(master address, port) for torch.distributed.run from --dist-url (tcp://HOST:PORT, env:// or auto)."""
    import os
    import socket

    from ..errors import FastInstError

    if dist_url == "auto":
        if machines > 1:
            raise FastInstError("--num-machines > 1 needs --dist-url tcp://HOST:PORT (machine 0's address)")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return "127.0.0.1", int(s.getsockname()[1])
    if dist_url.startswith("env://"):
        return os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    if dist_url.startswith("tcp://"):
        host, _, port = dist_url.removeprefix("tcp://").rstrip("/").rpartition(":")
        if host and port.isdigit():
            return host.strip("[]"), int(port)
    raise FastInstError(f"--dist-url {dist_url}: use tcp://HOST:PORT, env:// or auto")


def child_argv(argv: list[str]) -> list[str]:
    """The command line each process torch.distributed.run starts gets: `argv`, the words this command was given
    (after `fastinst`), minus the launcher's own options (`--num-gpus N`, `--num-gpus=N`, ...: each process is one of
    them). Everything else goes on verbatim; each process resolves `--config-file` and KEY VALUE pairs itself, as
    this one did. Words after `--` are values, never options."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--":
            out += [word, *words]
            break
        flag, eq, _ = word.partition("=")
        if flag in LAUNCH_OPTIONS:
            if not eq:
                next(words, None)  # its value
            continue
        out.append(word)
    return out


def launch(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Start --num-gpus processes on this machine (of --num-machines) through PyTorch's own launcher,
    `python -m torch.distributed.run`, each running this command line (`argv`, default `sys.argv[1:]`) minus the
    launch options; -> 0, or a one-line error if any failed. On a machine without CUDA the processes run on the
    CPU (gloo)."""
    import shlex
    import subprocess

    import torch

    from ..errors import FastInstError, note
    from ..factory import resolve_device

    n, machines = args.num_gpus, args.num_machines
    kind = resolve_device(args.device).type
    if kind == "cuda" and torch.cuda.device_count() < n:
        raise FastInstError(f"--num-gpus {n}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind != "cuda":
        note(f"--num-gpus {n}: no CUDA device in use, so {n} {kind} processes (gloo) on this machine")
    addr, port = rendezvous(args.dist_url, machines)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", f"--nnodes={machines}"]
    cmd += [f"--node_rank={args.machine_rank}", f"--master_addr={addr}", f"--master_port={port}", "-m", "fastinst"]
    cmd += child_argv(list(sys.argv[1:] if argv is None else argv))
    note("starting " + shlex.join(["python", *cmd[1:]]))
    code = subprocess.call(cmd)
    if code != 0:
        raise FastInstError(
            f"the processes started by torch.distributed.run failed (exit code {code}); their messages are above"
        )
    return 0


def evaluate_only(args: argparse.Namespace) -> int:
    """--eval-only: what `fastinst eval` does (`engine.evaluation.evaluate_split`) for --weights (MODEL.WEIGHTS) with
    the resolved config on --data's --val-split (DATASETS.TEST), writing the same metrics.json, table and predictions
    into --output (OUTPUT_DIR)."""
    from ..config import apply_overrides, get_config
    from ..engine.evaluation import evaluate_split
    from ..errors import FastInstError

    if not args.weights:
        raise FastInstError("--eval-only needs the checkpoint to evaluate: MODEL.WEIGHTS PATH (or --weights PATH)")
    cfg = apply_overrides(get_config(args.model), list(args.overrides or []))
    evaluate_split(
        args.data,
        model=cfg,
        weights=args.weights,
        split=args.val_split or "val",
        output=args.output,
        device=args.device,
    )
    return 0
