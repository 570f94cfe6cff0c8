#!/usr/bin/env python
"""Markdown table of `fastinst benchmark --json` files: `python benchmarks/table.py benchmarks/results/cpu_*.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(path: Path) -> str:
    r = json.loads(path.read_text())
    variant = r["backend"] + (" + fused" if r["fused"] else "") + (" + channels_last" if r["channels_last"] else "")
    n, p = r["network"], r["pipeline"]
    return (
        f"| {variant} | {r['threads']} | {n['median_ms']:.0f} / {n['p90_ms']:.0f} | "
        f"{p['median_ms']:.0f} / {p['p90_ms']:.0f} | {p['fps']:.2f} | {r['matmul']['gflops_per_s']:.0f} | "
        f"{n['fraction_of_peak']:.0%} | {p['fraction_of_peak']:.0%} | {p['goal_ms']:.0f} | "
        f"{'yes' if p['goal_met'] else 'no'} |"
    )


def main(paths: list[str]) -> None:
    print(
        "| variant | threads | network ms (median / p90) | pipeline ms (median / p90) | pipeline FPS | "
        "matmul GFLOP/s | network of peak | pipeline of peak | goal ms | goal met |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for p in paths:
        print(row(Path(p)))


if __name__ == "__main__":
    main(sys.argv[1:])
