"""`benchmarks/gpu.sh --dry-run`: the GPU benchmark's code path on the CPU (tiny input, 1 iteration), so it cannot rot.

Checks the markdown table has an fp32 and a bf16 eager row with positive times for each of the five published
variants, CUDA graphs / compile rows reported as skipped, and the JSON with the machine details.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("fastinst-d1-r50", "fastinst-d3-r50", "fastinst-d3-r101", "fastinst-d1-r50vd-dcn", "fastinst-d3-r50vd-dcn")


def table_rows(markdown: str) -> list[list[str]]:
    """Cells of the main table's body rows (the ones that start with a variant name)."""
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("| fastinst-") and len(line.split("|")) > 9
    ]


def test_gpu_benchmark_dry_run(tmp_path):
    # SKIP_TRAIN=1: gpu.sh's training part (benchmarks/gpu_train.py) has its own dry run in test_gpu_train_script.py
    env = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1", "SKIP_TRAIN": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    markdown = (tmp_path / "gpu_benchmark.md").read_text()
    rows = table_rows(markdown)
    header = [c.strip() for c in markdown.split("| variant | dtype | mode |")[1].splitlines()[0].strip("|").split("|")]
    columns = ["variant", "dtype", "mode", *header]
    assert columns[:6] == ["variant", "dtype", "mode", "network ms", "pipeline ms", "pipeline FPS"]
    assert columns[-1] == "paper V100 FPS"
    for variant in VARIANTS:
        mine = [r for r in rows if r[0] == variant]
        for dtype in ("fp32", "bf16"):
            (eager,) = [r for r in mine if r[1] == dtype and r[2].startswith("eager")]
            for name in ("network ms", "pipeline ms", "pipeline FPS", "top-100 pipeline ms", "paper V100 FPS"):
                assert float(eager[columns.index(name)]) > 0, (variant, dtype, name, eager)
            assert "NON-FINITE" not in eager[columns.index("check")]
            for mode in ("graphs", "compile", "compile+graphs"):
                (row,) = [r for r in mine if r[1] == dtype and r[2] == mode]
                assert row[3] == "skipped (no CUDA)", row

    data = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    assert {"device_name", "torch", "date"} <= set(data["machine"])
    assert data["settings"]["dry_run"] and data["settings"]["finished"]
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert len(ok) == 2 * len(VARIANTS)
    for r in ok:
        assert r["network"]["median_ms"] > 0 and r["pipeline"]["fps"] > 0 and r["check"]["finite"]
        if r["dtype"] == "bf16":  # the cast model is still the same network
            assert r["check"]["feature_error_vs_fp32"] < 0.2, r
    assert len(data["variants"]) == len(VARIANTS)
