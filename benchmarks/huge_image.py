#!/usr/bin/env python
"""Peak memory of `fastinst predict` on one huge image (default 10000x10000): post-processing must stay within a few GB.

    .venv/bin/python benchmarks/huge_image.py [--size 10000] [--models fastinst-demo fastinst-d1-r50] [--max-dets 100]

Writes a photo-like PNG (smooth colour fields, soft blobs, edges and sensor-like noise, drawn a band of rows at a
time) and a randomly initialised checkpoint per model (seed 0; memory does not depend on the weights), then runs the
real CLI in a child process per model:

    fastinst predict --model M --weights W IMAGE --score-threshold 0 --max-dets K --device cpu --output DIR

Threshold 0 keeps every one of the model's top-k (query, class) pairs (k = --max-dets, 100 by default), and each
pair is returned with its own bool mask at full size (a query paired with several classes too): the worst case,
k x H x W bytes of output (10 GB for 100 pairs at 10000x10000). The child reports its resident-set high-water mark
(VmHWM from /proc/self/status) twice: right after `Predictor.predict_batch` returns (reading, resizing, the network
and post-processing: masks at full size) and at exit (the overlay PNG written too). The parent polls the child's
resident set and stops it above --limit-gb, so that a regression cannot take a shared machine down; such a row reads
`> limit`.

The table: model, image size, queries (the model's), instances returned (one bool mask at full size each), peak RSS
in GB (10^9 bytes) after post-processing and for the whole run, seconds of the whole child.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import sys
def hwm_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
import fastinst.engine.predictor as predictor
batch = predictor.Predictor.predict_batch
def logged(self, *args, **kwargs):
    out = batch(self, *args, **kwargs)
    masks = sum(len(r) for r in out)
    print("DETECTED", hwm_kib(), masks, *(tuple(r.masks.shape) for r in out), flush=True)
    return out
predictor.Predictor.predict_batch = logged
from fastinst.cli import main
rc = main(sys.argv[1:])
print("FINAL", hwm_kib(), flush=True)
sys.exit(rc)
"""


def write_photo(path: Path, size: int, seed: int = 0, band: int = 500) -> None:
    """A `size`x`size` RGB PNG that looks like a photo to a network and a compressor: low-frequency colour fields,
    a few dozen soft discs, hard edges and per-pixel noise; made `band` rows at a time (no full-size float array)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.uint8)
    x = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :]  # (1, W)
    waves = rng.uniform(1.0, 6.0, (3, 2)).astype(np.float32)
    phases = rng.uniform(0.0, 6.3, (3, 2)).astype(np.float32)
    discs = [(*rng.uniform(0, 1, 2), rng.uniform(0.02, 0.12), rng.uniform(-90, 90, 3)) for _ in range(40)]
    for top in range(0, size, band):
        y = np.linspace(top / size, (top + band) / size, min(band, size - top), endpoint=False, dtype=np.float32)
        y = y[:, None]  # (b, 1)
        rows = np.empty((y.shape[0], size, 3), np.float32)
        for c in range(3):
            rows[..., c] = 110 + 60 * np.sin(waves[c, 0] * 6.3 * x + phases[c, 0]) * np.cos(
                waves[c, 1] * 6.3 * y + phases[c, 1]
            )
        for cx, cy, r, colour in discs:
            inside = ((x - cx) ** 2 + (y - cy) ** 2) < r * r
            rows[inside] += colour.astype(np.float32)
        rows[:, x[0] > 0.7] *= 0.6  # a hard vertical edge (a wall, a shadow)
        rows += rng.normal(0.0, 6.0, rows.shape).astype(np.float32)
        image[top : top + y.shape[0]] = np.clip(rows, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path, compress_level=1)


def run_child(cli: list[str], threads: int, limit_gb: float) -> dict:
    """Run the CLI in a child, polling its resident set (stopped above `limit_gb`) -> what it reported."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *cli], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    stopped, polled = False, 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            polled = max(polled, rss)
        except (OSError, StopIteration):
            rss = 0
        if rss > limit_gb * 2**30 / 1024:
            proc.kill()
            stopped = True
        time.sleep(0.05)
    out, err = proc.communicate()
    seconds = time.time() - start
    if proc.returncode != 0 and not stopped:
        raise RuntimeError(f"{' '.join(cli)} failed ({proc.returncode}):\n{err[-3000:]}")
    result = {"seconds": seconds, "stopped": stopped, "polled_gb": polled * 1024 / 1e9, "summary": ""}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "DETECTED":
            result["detected_gb"], result["masks"] = int(parts[1]) * 1024 / 1e9, int(parts[2])
        elif parts and parts[0] == "FINAL":
            result["final_gb"] = int(parts[1]) * 1024 / 1e9
        elif line.startswith("predict:"):
            result["summary"] = line
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=10000, help="image side in pixels (default 10000)")
    p.add_argument("--models", nargs="+", default=["fastinst-demo", "fastinst-d1-r50"])
    p.add_argument("--threshold", type=float, default=0.0, help="--score-threshold of the CLI (default 0: worst case)")
    p.add_argument(
        "--max-dets",
        nargs="+",
        type=int,
        default=[100],
        help="--max-dets of the CLI, one per model or one for all (default 100: the official top-k, every pair)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch/OpenMP threads in the child (default: torch's)")
    p.add_argument("--limit-gb", type=float, default=12.0, help="stop a child whose resident set passes this")
    args = p.parse_args()
    import torch

    from fastinst import build_model
    from fastinst.config import get_config

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        image = tmp / f"photo_{args.size}.png"
        t = time.time()
        write_photo(image, args.size)
        print(f"wrote {image.name} ({image.stat().st_size / 1e6:.0f} MB) in {time.time() - t:.0f} s", flush=True)
        max_dets = args.max_dets * len(args.models) if len(args.max_dets) == 1 else args.max_dets
        for model, dets in zip(args.models, max_dets, strict=True):
            ckpt = tmp / f"{model}.pth"
            torch.manual_seed(0)
            torch.save({"model": build_model(model).state_dict()}, ckpt)
            cli = ["predict", "--model", model, "--weights", str(ckpt), str(image), "--device", "cpu"]
            cli += ["--score-threshold", str(args.threshold), "--max-dets", str(dets)]
            cli += ["--output", str(tmp / f"out_{model}")]
            r = run_child(cli, args.threads, args.limit_gb)
            print(f"{model}: {r['summary'] or 'stopped'}", flush=True)
            rows.append((model, get_config(model).model.num_queries, r))
            ckpt.unlink()
    print()
    head = ("model", "image", "queries", "instances", "GB after post", "GB peak", "seconds")
    print(f"{head[0]:<18} " + " ".join(f"{h:>{w}}" for h, w in zip(head[1:], (11, 7, 9, 13, 8, 8), strict=True)))
    for model, queries, r in rows:
        detected = f"{r['detected_gb']:.2f}" if "detected_gb" in r else "-"
        final = f"> {args.limit_gb:g}" if r["stopped"] else f"{r.get('final_gb', r['polled_gb']):.2f}"
        masks = r.get("masks", "-")
        size = f"{args.size}x{args.size}"
        print(f"{model:<18} {size:>11} {queries:>7} {masks:>9} {detected:>13} {final:>8} {r['seconds']:>8.0f}")
    print("GB = 10^9 bytes of resident memory (VmHWM); instances = bool masks at full size returned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
