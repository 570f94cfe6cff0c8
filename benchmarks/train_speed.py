#!/usr/bin/env python
"""Training speed side by side with the official trainer: D1-R50 iterations per second on the same data and settings.

    .venv/bin/python benchmarks/train_speed.py --official-python /work/official/venv/bin/python \
        --official-src /work/official/FastInst [--size 512] [--batch 2] [--iters 12] [--warmup 3] [--rounds 2] \
        [--bf16] [--json FILE]

Both sides train `fastinst_R50_ppm-fpn_x1_576` (D1-R50) from random weights on the synthetic shapes drawn at `--size`
px (`datasets/train-speed-<size>`, a COCO folder both read: detectron2 through `register_coco_instances`, ours through
`load_dataset`), at one fixed training size (short side `--size`, no crop, flips on), batch `--batch`, data read in
the main process (0 workers), AdamW with the backbone multiplier, 12,544 points, 4 classes, with torch's default
threads. Official: detectron2's `SimpleTrainer.run_step` of FastInst's own `train_net.Trainer` on `MODEL.DEVICE cpu`
(its AMP trainer is CUDA-only, so fp32). Ours: `Trainer.step` of `fastinst.engine.trainer` plus the loader's next
batch, fp32, and with `--bf16` also `solver.amp_cpu_bf16=true`. Each side runs in its own process (each in its own
environment); the sides alternate for `--rounds` rounds, and the table gives the median seconds per iteration over
every timed iteration of all rounds, iterations per second and the ratio to the official trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_YAML = "configs/coco/instance-segmentation/fastinst_R50_ppm-fpn_x1_576.yaml"


def dataset(size: int) -> Path:
    """The synthetic COCO folder at `size` px (made once, with this project's generator)."""
    from fastinst.data.synthetic import ensure_synthetic_coco

    root = ROOT / "datasets" / f"train-speed-{size}"
    ensure_synthetic_coco(root, image_size=size, num_train=200, num_val=0)
    return root


def run_ours(data: Path, size: int, batch: int, iters: int, warmup: int, bf16: bool) -> list[float]:
    import torch

    from fastinst.data.loader import build_train_loader
    from fastinst.engine.trainer import Trainer
    from fastinst.engine.training import build_training

    overrides = [
        f"solver.ims_per_batch={batch}",
        f"input.min_size_train=[{size}]",
        f"input.max_size_train={size}",
        "input.crop_enabled=false",
        "solver.num_workers=0",
        f"solver.amp_cpu_bf16={'true' if bf16 else 'false'}",
    ]
    cfg, net, train, _ = build_training("fastinst-d1-r50", str(data), overrides=overrides, val_split="")
    trainer = Trainer(cfg, net, lambda start: None, ROOT / "runs" / "train_speed", progress=False)
    batches = iter(build_train_loader(train.records, cfg, batch))
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        trainer.step(next(batches))
        trainer.iteration += 1
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    del torch
    return times


def run_official(src: Path, data: Path, size: int, batch: int, iters: int, warmup: int) -> list[float]:
    sys.path.insert(0, str(src))
    import torch  # before detectron2._C
    from detectron2.data.datasets import register_coco_instances
    from detectron2.utils.events import EventStorage
    from train_net import Trainer, setup  # FastInst's own train_net.py

    register_coco_instances("speed_train", {}, str(data / "annotations" / "instances_train.json"), str(data / "train"))
    args = argparse.Namespace(
        config_file=str(src / OFFICIAL_YAML),
        opts=[
            "MODEL.DEVICE", "cpu",
            "MODEL.WEIGHTS", "",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4",
            "DATASETS.TRAIN", "('speed_train',)",
            "DATASETS.TEST", "()",
            "SOLVER.IMS_PER_BATCH", str(batch),
            "SOLVER.AMP.ENABLED", "False",
            "INPUT.MIN_SIZE_TRAIN", f"({size},)",
            "INPUT.MAX_SIZE_TRAIN", str(size),
            "INPUT.CROP.ENABLED", "False",
            "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(ROOT / "runs" / "train_speed_official"),
        ],
        eval_only=False, resume=False, num_gpus=0,
    )  # fmt: skip
    cfg = setup(args)
    trainer = Trainer(cfg)
    loop = trainer._trainer  # detectron2's SimpleTrainer: run_step = next batch, forward, backward, step
    times = []
    with EventStorage(0) as storage:
        for i in range(warmup + iters):
            storage.iter = loop.iter = i
            t0 = time.perf_counter()
            loop.run_step()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    del torch
    return times


def worker(args) -> None:
    data = Path(args.data)
    if args.worker == "official":
        times = run_official(Path(args.official_src), data, args.size, args.batch, args.iters, args.warmup)
    else:
        times = run_ours(data, args.size, args.batch, args.iters, args.warmup, args.worker == "ours-bf16")
    print("TIMES " + json.dumps(times), flush=True)


def cpu_line() -> str:
    model, flags = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in have)
    except OSError:
        pass
    return f"{model} ({flags}), {os.cpu_count()} CPUs"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official-python", help="the official environment's python (../shared/OFFICIAL-ENV.md)")
    p.add_argument("--official-src", help="the official FastInst checkout (its train_net.py)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="also time ours with bf16 autocast")
    p.add_argument("--json", help="also write the table as JSON")
    p.add_argument("--worker", choices=["official", "ours", "ours-bf16"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    data = dataset(args.size)
    sides = ["official", "ours"] if args.official_python else ["ours"]
    sides += ["ours-bf16"] if args.bf16 else []
    common = ["--size", str(args.size), "--batch", str(args.batch), "--iters", str(args.iters)]
    common += ["--warmup", str(args.warmup), "--data", str(data)]
    times: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:  # alternate the order: neither side always goes first
            python = args.official_python if side == "official" else sys.executable
            cmd = [python, __file__, "--worker", side, *common]
            cmd += ["--official-src", args.official_src] if side == "official" else []
            env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            line = [x for x in done.stdout.splitlines() if x.startswith("TIMES ")]
            if done.returncode or not line:
                sys.exit(f"{side} failed:\n{done.stderr[-3000:]}")
            times[side] += json.loads(line[-1][6:])
            print(f"round {r + 1}: {side} {statistics.median(json.loads(line[-1][6:])):.3f} s/it", flush=True)
    import torch

    print(f"\nD1-R50 training, batch {args.batch}, {args.size}-px images, {torch.get_num_threads()} threads")
    print(f"CPU: {cpu_line()}; torch {torch.__version__}")
    base = statistics.median(times["official"]) if "official" in times else None
    print(f"{'trainer':<28} {'s/it':>7} {'it/s':>6} {'vs official':>12}")
    rows = []
    for side in sides:
        med = statistics.median(times[side])
        name = {"official": "official (detectron2, fp32)", "ours": "ours fp32", "ours-bf16": "ours bf16 autocast"}
        ratio = f"{base / med:.2f}x" if base else "-"
        print(f"{name[side]:<28} {med:7.3f} {1 / med:6.2f} {ratio:>12}")
        rows.append({"side": side, "s_per_it": med, "times": times[side]})
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_line(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
