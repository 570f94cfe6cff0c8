#!/usr/bin/env python
"""Peak memory of `fastinst predict` over folders of 100 and 2,000 small images (bounded memory, no growth per image).

    .venv/bin/python benchmarks/predict_memory.py [--sizes 100 2000] [--model fastinst-demo]

Writes the images (64x80 PNGs) and a demo checkpoint to a temporary folder, runs the real CLI in a child process per
folder size with --save-json and overlays, and prints the child's peak RSS (ru_maxrss) for each and their ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[100, 2000])
    p.add_argument("--model", default="fastinst-demo")
    args = p.parse_args()
    import torch

    from fastinst import build_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "w.pth"
        torch.manual_seed(0)
        torch.save({"model": build_model(args.model).state_dict()}, ckpt)
        rng = np.random.default_rng(0)
        for n in args.sizes:
            folder = tmp / f"images_{n}"
            folder.mkdir()
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
            cmd = [
                sys.executable,
                "-c",
                "import resource, sys; from fastinst.cli import main; rc = main(sys.argv[1:]); "
                "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)",
                "predict",
                "--model",
                args.model,
                "--weights",
                str(ckpt),
                str(folder),
                "--output",
                str(tmp / f"out_{n}"),
                "--save-json",
            ]
            t = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-2000:])
                return 1
            rss = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("MAXRSS")))
            rows.append((n, rss / 1024, time.time() - t))
    print(f"{'images':>8} {'peak RSS MiB':>14} {'seconds':>9}")
    for n, mib, sec in rows:
        print(f"{n:>8} {mib:>14.1f} {sec:>9.1f}")
    if len(rows) >= 2:
        print(f"peak RSS ratio {rows[-1][0]} vs {rows[0][0]} images: {rows[-1][1] / rows[0][1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
