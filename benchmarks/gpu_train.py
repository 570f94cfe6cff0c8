#!/usr/bin/env python
"""GPU training step of D1-R50 (`fastinst-d1-r50`): fp32, fp16 AMP and bf16 AMP, through our real trainer.

    benchmarks/gpu_train.py [--out DIR] [--budget-s 150] [--batch 16] [--size 640] [--iters 20] [--warmup 5]
    benchmarks/gpu_train.py --dry-run [--out DIR]   # the same code on the CPU, tiny input, 1 step (CI)
    benchmarks/gpu.sh                                # runs benchmarks/gpu.py, then this with the same --out

What is timed is `fastinst.engine.trainer.Trainer.step`, the step `fastinst train` runs: forward, losses (Hungarian
matching, point-sampled mask losses), backward and the AdamW step, with `torch.cuda.synchronize()` before and after.
The trainer is built the way `benchmarks/train_speed.py` builds it: `fastinst.engine.training.build_training` on the
synthetic shapes (`fastinst.data.synthetic.ensure_synthetic_coco`, square `--size` px images, 2 x batch of them, in
`datasets/gpu-train-<size>`), one fixed training size (short side `--size`, no crop, flips on), data read in the main
process (`solver.num_workers=0`). Each step takes its batch from the training loader (`build_train_loader`); the
loader's time (read, decode, augment, collate: host only) is reported separately as "data", the images' copy to the
GPU is part of the step (the model moves its inputs).

Batch: 16 images on ONE GPU. The paper trains with 16 images in all over 8 GPUs (2 per GPU), so this is one GPU doing
a whole paper batch, not one GPU's share of it: images/s is what matters.

Rows (each its own freshly built trainer, same seed, same initial weights, same batches):

* fp32: `solver.amp=false`; torch's defaults otherwise (cuDNN convolutions may use TF32; the JSON records the flags);
* fp16 AMP: `solver.amp=true`, which on CUDA is the trainer's own `torch.autocast(float16)` + `GradScaler`;
* bf16 AMP: the config has no bf16-on-CUDA switch (`solver.amp_cpu_bf16` is for the CPU only), so the trainer is
  built with `solver.amp=false` (GradScaler disabled) and its `amp_dtype` is set to `torch.bfloat16` after
  construction; `Trainer.step` then runs the forward under `torch.autocast("cuda", bfloat16)` with an unscaled
  backward (bf16 has fp32's range: no loss scaling needed).

Per row: median (and p90) seconds per step over `--iters` steps after `--warmup` steps, images/s (batch / median
step), the loader's median seconds per batch, peak GPU memory (`torch.cuda.max_memory_allocated`, reset before the
trainer is built: weights, AdamW state, activations and gradients) and the loss (the last step's total; any NaN/Inf
step is flagged: the trainer skips such a step).

Weights are random, as training from scratch; a random ResNet's frozen BatchNorms are identities and its activations
grow past fp16's range, so the backbone's BatchNorm statistics are first set from one random image
(`calibrate_batchnorms` of benchmarks/gpu.py), which keeps them at a pretrained backbone's scale (the paper starts
from ImageNet weights).

Each row runs inside its own try: a failure gives "failed: <reason>" ("failed: out of memory" for an OOM) and the next
row runs. `--budget-s` bounds the whole run, data generation included: a row that cannot start in the time left is
"skipped (time budget)", and each row gets an equal share of the time left when it starts: past it, it stops after its
first timed step (the table says how many steps it timed). The table and JSON are rewritten after every row.

`--dry-run`: CPU, batch 2 at 128 px, 1 warm-up + 1 timed step, 1 thread, fp32 and bf16 (CPU autocast,
`solver.amp_cpu_bf16=true`); the fp16 row is "skipped (no CUDA)". Without `--out` a dry run writes to a temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastinst.config import Config, apply_overrides
from fastinst.data.loader import build_train_loader
from fastinst.data.synthetic import ensure_synthetic_coco
from fastinst.engine.trainer import Trainer
from fastinst.engine.training import build_training
from gpu import calibrate_batchnorms, cpu_name, one_line, spread  # benchmarks/gpu.py, next to this script
from gpu import machine_info as gpu_machine_info  # its machine_info, extended below

MODEL = "fastinst-d1-r50"
DTYPES = ("fp32", "fp16", "bf16")
AMP_LABEL = {"fp32": "none", "fp16": "autocast fp16 + GradScaler", "bf16": "autocast bf16"}
DEFAULTS = {"batch": 16, "size": 640, "iters": 20, "warmup": 5}
DRY_DEFAULTS = {"batch": 2, "size": 128, "iters": 1, "warmup": 1}
MIN_START_S = 10.0  # a row needs at least this much of the budget left to start
MARKDOWN, JSON_FILE = "gpu_train.md", "gpu_train.json"
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, batch 2 at 128 px, 1 warm-up + 1 step, fp32 + bf16")
    p.add_argument("--out", help="folder for the table and JSON (default benchmarks/results/gpu, dry run: a temp dir)")
    p.add_argument("--budget-s", type=float, default=150.0, help="time for the whole run, seconds (default 150)")
    p.add_argument("--dtypes", help="comma list of fp32, fp16, bf16 (default all three)")
    p.add_argument("--batch", type=int, help="images per step (default 16; dry run 2)")
    p.add_argument("--size", type=int, help="training size, short side px (default 640; dry run 128)")
    p.add_argument("--iters", type=int, help="timed steps per row (default 20; dry run 1)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 5; dry run 1)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's; dry run 1)")
    args = p.parse_args(argv)
    dtypes = [t.strip() for t in (args.dtypes or ",".join(DTYPES)).split(",") if t.strip()]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        p.error(f"--dtypes: unknown {', '.join(bad) or '(none given)'} (choose from {', '.join(DTYPES)})")
    args.dtypes = [d for d in DTYPES if d in dtypes]  # always fp32, fp16, bf16 order
    for key, value in (DRY_DEFAULTS if args.dry_run else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        p.error("--batch and --iters must be at least 1, --warmup at least 0")
    if args.size < 32:
        p.error("--size must be at least 32")
    if args.dry_run and not args.threads:
        args.threads = 1
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Set-up: data, the trainer's config and initial weights (built once; every row starts from copies of them)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    cfg: Config  # D1-R50 with the benchmark's overrides, solver.amp=false
    net: torch.nn.Module  # the initial weights, on the CPU (each row trains a deep copy)
    records: list[dict]  # the training split, as the loader takes it
    data: Path
    calibrated: int  # backbone BatchNorms given statistics
    seconds: float


def prepare(args: argparse.Namespace, data: Path) -> Setup:
    start = time.perf_counter()
    ensure_synthetic_coco(data, image_size=args.size, num_train=2 * args.batch, num_val=0)
    overrides = [
        f"solver.ims_per_batch={args.batch}",
        f"input.min_size_train=[{args.size}]",
        f"input.max_size_train={args.size}",
        "input.crop_enabled=false",
        "solver.num_workers=0",
        "solver.amp=false",
        "solver.amp_cpu_bf16=false",
    ]
    cfg, net, train, _ = build_training(MODEL, str(data), overrides=overrides, val_split="")
    calibrated = calibrate_batchnorms(net)
    return Setup(cfg, net, list(train.records), data, calibrated, time.perf_counter() - start)


def make_trainer(setup: Setup, dtype_name: str, device: torch.device, workdir: Path) -> Trainer:
    """A fresh `Trainer` on `device` for one row, from copies of the initial weights and the config."""
    cuda = device.type == "cuda"
    amp = dtype_name == "fp16"
    cpu_bf16 = dtype_name == "bf16" and not cuda
    cfg = apply_overrides(setup.cfg, [f"solver.amp={str(amp).lower()}", f"solver.amp_cpu_bf16={str(cpu_bf16).lower()}"])
    torch.manual_seed(cfg.solver.seed)  # the same point sampling in every row
    trainer = Trainer(
        cfg, copy.deepcopy(setup.net), lambda start: iter(()), workdir, device=str(device), progress=False
    )
    if dtype_name == "bf16" and cuda:  # no config switch for bf16 on CUDA: set the trainer's autocast dtype
        trainer.amp_dtype = torch.bfloat16
        trainer.scaler = torch.amp.GradScaler("cuda", enabled=False)
    want = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    if trainer.amp_dtype != want or trainer.scaler.is_enabled() != (dtype_name == "fp16"):
        raise RuntimeError(
            f"the trainer's AMP set-up changed: {dtype_name} row got amp_dtype={trainer.amp_dtype}, "
            f"GradScaler enabled={trainer.scaler.is_enabled()} (see Trainer.__init__)"
        )
    return trainer


# ---------------------------------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(values: list[float]) -> dict[str, float]:
    median, p90, low = spread(values)
    return {"median_s": median, "p90_s": p90, "min_s": low}


def measure(
    args: argparse.Namespace, setup: Setup, dtype_name: str, device: torch.device, row_end: float
) -> dict[str, Any]:
    """Build the row's trainer, run `--warmup` + `--iters` steps (fewer past `row_end`), return the numbers."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fastinst-gpu-train-") as workdir:
        trainer = make_trainer(setup, dtype_name, device, Path(workdir))
        batches = iter(build_train_loader(setup.records, trainer.cfg, args.batch))
        sync(device)
        build_s = time.perf_counter() - started
        step_times: list[float] = []
        data_times: list[float] = []
        losses: list[float] = []
        nonfinite = warmed = 0
        while len(step_times) < args.iters:
            over = time.perf_counter() > row_end
            if over and step_times:
                break  # the row's share of the budget is spent: keep what was timed
            timed = warmed >= args.warmup or (over and warmed >= 1)  # short of time: cut the warm-up, not the 1st
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            sync(device)
            t2 = time.perf_counter()
            out = trainer.step(batch)
            sync(device)
            t3 = time.perf_counter()
            trainer.iteration += 1
            finite = all(math.isfinite(v) for v in out.values())
            nonfinite += not finite
            losses.append(out.get("total_loss", float("nan")))
            if timed:
                step_times.append(t3 - t2)
                data_times.append(t1 - t0)
            else:
                warmed += 1
        grad_scale = trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None  # fp16: the loss scale reached
        del trainer, batches
    step = summary(step_times)
    result: dict[str, Any] = {
        "amp": AMP_LABEL[dtype_name],
        "step": step,
        "data": summary(data_times),
        "images_per_s": args.batch / step["median_s"],
        "images_per_s_with_data": args.batch / (step["median_s"] + statistics.median(data_times)),
        "iters": len(step_times),
        "warmup": warmed,
        "cut_by_budget": len(step_times) < args.iters or warmed < args.warmup,
        "loss": {"last_total": losses[-1], "first_total": losses[0], "nonfinite_steps": nonfinite},
        "finite": nonfinite == 0,
        "grad_scale": grad_scale,
        "build_s": build_s,
        "step_times_s": step_times,
        "data_times_s": data_times,
    }
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    return result


def is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in text or "alloc_failed" in text


def run_row(
    args: argparse.Namespace, setup: Setup, dtype_name: str, device: torch.device, t0: float, rows_left: int
) -> dict[str, Any]:
    row: dict[str, Any] = {"dtype": dtype_name}
    if dtype_name == "fp16" and device.type != "cuda":
        return {**row, "status": "skipped", "reason": "no CUDA"}
    left = args.budget_s - (time.perf_counter() - t0)
    if left < MIN_START_S:
        return {**row, "status": "skipped", "reason": "time budget"}
    try:
        row.update(measure(args, setup, dtype_name, device, time.perf_counter() + left / max(rows_left, 1)))
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - one failed row must not stop the others; the reason goes in the table
        row["status"] = "failed"
        row["reason"] = "out of memory" if is_oom(e) else one_line(e)
        row["traceback"] = traceback.format_exc(limit=6).splitlines()[-12:]
    gc.collect()  # the failed row's trainer goes with its traceback: free its memory before the next row
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
    return row


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict[str, Any]:
    """`gpu.machine_info`, with the CPU and the GPU's memory."""
    info = gpu_machine_info(device)
    info["cpu"] = cpu_name()
    if device.type == "cuda":
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def loss_cell(row: dict[str, Any]) -> str:
    loss = row["loss"]
    if loss["nonfinite_steps"]:
        return f"NON-FINITE ({loss['nonfinite_steps']} of {row['iters'] + row['warmup']} steps)"
    return f"{loss['last_total']:.3f} (finite)"


def markdown(args: argparse.Namespace, setup: Setup | None, rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    cuda = "cuda" in info
    lines = [
        "# FastInst D1-R50 training step" + (" (dry run: CPU, tiny input, not a measurement)" if args.dry_run else ""),
        "",
        f"{info['device_name']} ({info['device']}) · torch {info['torch']}"
        + (f" · CUDA {info['cuda']} · cuDNN {info['cudnn']}" if cuda else "")
        + f" · {info['date']} · batch {args.batch} on one device, {args.size}x{args.size} images · median of "
        f"{args.iters} steps after {args.warmup} warm-up steps",
        "",
        "| dtype | AMP | s/step | p90 s/step | images/s | data s/batch | peak GPU memory GiB | loss | steps timed |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in sorted(rows, key=lambda r: DTYPES.index(r["dtype"])):
        name = row["dtype"]
        if row["status"] != "ok":
            reason = row["reason"].replace("|", "/")
            label = f"failed: {reason}" if row["status"] == "failed" else f"skipped ({reason})"
            lines.append(f"| {name} | {AMP_LABEL[name]} | {label} | — | — | — | — | — | — |")
            continue
        memory = f"{row['peak_memory_gib']:.2f}" if "peak_memory_gib" in row else "— (CPU)"
        steps = f"{row['iters']}" + (" (time budget)" if row["cut_by_budget"] else "")
        lines.append(
            f"| {name} | {row['amp']} | {row['step']['median_s']:.3f} | {row['step']['p90_s']:.3f} | "
            f"{row['images_per_s']:.1f} | {row['data']['median_s']:.3f} | {memory} | {loss_cell(row)} | {steps} |"
        )
    calibrated = f" ({setup.calibrated} BatchNorms)" if setup else ""
    lines += [
        "",
        "A step is `fastinst.engine.trainer.Trainer.step` (what `fastinst train` runs): the batch's copy to the "
        "device, forward, losses (matching, point-sampled mask losses), backward and the AdamW step, timed between "
        "`torch.cuda.synchronize()` calls; images/s = batch / median step. data s/batch: the training loader's next "
        "batch (read, decode, flip, collate in the main process), not part of the step. Peak memory: "
        "`torch.cuda.max_memory_allocated` over the row (weights, optimizer state, activations, gradients).",
        "",
        f"Batch {args.batch} on one device: the paper's batch is 16 in all over 8 GPUs (2 per GPU), so the default "
        "is one GPU doing a whole paper batch. fp16 = `solver.amp=true` (autocast + GradScaler); bf16 on CUDA = "
        "the trainer's `amp_dtype` set to bfloat16 with the scaler off (no config switch for it), on the CPU "
        "`solver.amp_cpu_bf16=true`. Random weights, backbone BatchNorm statistics set from one random image"
        f"{calibrated}; synthetic shapes (4 classes), D1-R50's losses and 12,544 points; loss = the last step's total.",
        "",
    ]
    return "\n".join(lines)


def write(
    args: argparse.Namespace,
    out: Path,
    setup: Setup | None,
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    t0: float,
    finished: bool,
) -> None:
    settings: dict[str, Any] = {
        k: getattr(args, k) for k in ("dry_run", "budget_s", "dtypes", "batch", "size", "iters", "warmup")
    }
    settings.update(model=MODEL, elapsed_s=round(time.perf_counter() - t0, 1), finished=finished)
    if setup is not None:
        settings.update(
            images=len(setup.records),
            data=str(setup.data),
            setup_s=round(setup.seconds, 1),
            calibrated_batchnorms=setup.calibrated,
            num_points=setup.cfg.loss.num_points,
        )
    data = {"machine": info, "settings": settings, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_FILE).write_text(json.dumps(data, indent=2) + "\n")
    text = markdown(args, setup, rows, info)
    (out / MARKDOWN).write_text(text if finished else text.replace("\n\n", " · **run in progress**\n\n", 1))


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("no CUDA device here; run with --dry-run for the CPU check of this script", file=sys.stderr)
        return 2
    out = (
        Path(args.out)
        if args.out
        else (Path(tempfile.mkdtemp(prefix="fastinst-gpu-dry-")) if args.dry_run else REPO / "benchmarks/results/gpu")
    )
    info = machine_info(device)
    print(
        f"{info['device_name']} · torch {info['torch']} · {MODEL} training step · budget {args.budget_s:.0f} s · {out}"
    )
    with contextlib.ExitStack() as stack:
        if args.dry_run:  # a private dataset: nothing shared, nothing left behind
            data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fastinst-train-dry-"))) / "shapes"
        else:
            data = REPO / "datasets" / f"gpu-train-{args.size}"
        setup = prepare(args, data)
        print(f"[{time.perf_counter() - t0:6.1f} s] set-up: {len(setup.records)} images in {data}", flush=True)
        rows: list[dict[str, Any]] = []
        for i, dtype_name in enumerate(args.dtypes):
            row = run_row(args, setup, dtype_name, device, t0, len(args.dtypes) - i)
            rows.append(row)
            if row["status"] == "ok":
                memory = f", peak {row['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in row else ""
                text = (
                    f"{row['step']['median_s']:.3f} s/step ({row['images_per_s']:.1f} images/s), data "
                    f"{row['data']['median_s']:.3f} s/batch{memory}, loss {loss_cell(row)}, {row['iters']} steps"
                )
            else:
                text = f"{row['status']}: {row['reason']}"
            print(f"[{time.perf_counter() - t0:6.1f} s] {dtype_name}: {text}", flush=True)
            write(args, out, setup, rows, info, t0, finished=False)
        write(args, out, setup, rows, info, t0, finished=True)
    print((out / MARKDOWN).read_text())
    print(f"wrote {out / MARKDOWN} and {out / JSON_FILE} in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0 if any(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
