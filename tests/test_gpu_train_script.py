"""`benchmarks/gpu_train.py --dry-run`: the GPU training-step benchmark's code path on the CPU (batch 2 at 128 px, 1
step), so it cannot rot; and `benchmarks/gpu.sh` running it after `benchmarks/gpu.py` with the right arguments.

Checks the markdown table has an fp32 and a bf16 row with positive times and a finite loss, the fp16 row reported as
skipped (no CUDA), and the JSON with the machine details.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["dtype", "AMP", "s/step", "p90 s/step", "images/s", "data s/batch", "peak GPU memory GiB", "loss"]


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The table's body rows by dtype."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("fp32", "fp16", "bf16"):
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_gpu_train_dry_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    markdown = (tmp_path / "gpu_train.md").read_text()
    header = [c.strip() for c in markdown.split("| dtype |")[1].splitlines()[0].strip("|").split("|")]
    assert ["dtype", *header][: len(COLUMNS)] == COLUMNS
    rows = table_rows(markdown)
    assert set(rows) == {"fp32", "fp16", "bf16"}
    for dtype in ("fp32", "bf16"):
        row = rows[dtype]
        for name in ("s/step", "p90 s/step", "images/s"):
            assert float(row[COLUMNS.index(name)]) > 0, (dtype, name, row)
        loss = row[COLUMNS.index("loss")]
        assert loss.endswith("(finite)") and math.isfinite(float(loss.split()[0])), row
    assert rows["fp16"][2] == "skipped (no CUDA)", rows["fp16"]
    assert "dry run" in markdown.splitlines()[0]

    data = json.loads((tmp_path / "gpu_train.json").read_text())
    assert {"device_name", "torch", "date"} <= set(data["machine"])
    settings = data["settings"]
    assert settings["dry_run"] and settings["finished"] and settings["model"] == "fastinst-d1-r50"
    assert (settings["batch"], settings["size"], settings["iters"], settings["warmup"]) == (2, 128, 1, 1)
    by_dtype = {r["dtype"]: r for r in data["rows"]}
    assert by_dtype["fp16"]["status"] == "skipped" and by_dtype["fp16"]["reason"] == "no CUDA"
    for dtype in ("fp32", "bf16"):
        r = by_dtype[dtype]
        assert r["status"] == "ok" and r["finite"] and r["iters"] == 1, r
        assert r["step"]["median_s"] > 0 and r["images_per_s"] > 0 and r["data"]["median_s"] >= 0
        assert math.isfinite(r["loss"]["last_total"]) and r["loss"]["nonfinite_steps"] == 0


def test_gpu_sh_runs_the_training_benchmark_after_the_latency_one(tmp_path):
    """gpu.sh gives gpu.py every argument and gpu_train.py only --out / --dry-run (a stub stands in for python)."""
    log = tmp_path / "calls"
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    stub.chmod(0o755)

    def calls(*args: str, **env: str) -> list[str]:
        log.unlink(missing_ok=True)
        run_env = {k: v for k, v in os.environ.items() if k not in ("DRY", "SKIP_TRAIN")} | {"PY": str(stub), **env}
        proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), *args], env=run_env, timeout=60)
        assert proc.returncode == 0
        return log.read_text().splitlines()

    assert calls("--out", "/r", "--budget-s", "60", "--variants", "fastinst-d1-r50") == [
        "benchmarks/gpu.py --out /r --budget-s 60 --variants fastinst-d1-r50",
        "benchmarks/gpu_train.py --out /r",
    ]
    assert calls("--dry-run", "--out=/r") == [
        "benchmarks/gpu.py --dry-run --out=/r",
        "benchmarks/gpu_train.py --dry-run --out=/r",
    ]
    assert calls(DRY="1") == ["benchmarks/gpu.py --dry-run", "benchmarks/gpu_train.py --dry-run"]
    assert calls("--dry-run", SKIP_TRAIN="1") == ["benchmarks/gpu.py --dry-run"]
