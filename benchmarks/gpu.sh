#!/usr/bin/env bash
# GPU latency of the five published variants (fp32 / bf16 / fp16 x eager / CUDA graphs / torch.compile), network and
# full pipeline with post-processing; writes gpu_benchmark.md + gpu_benchmark.json into --out (default
# benchmarks/results/gpu). Fits in ~8 minutes on one GPU with the default --budget-s 420. See benchmarks/gpu.py.
#   benchmarks/gpu.sh [--out DIR] [--budget-s S] [--variants ...] [--dtypes ...] [--modes ...]
#   benchmarks/gpu.sh --dry-run [--out DIR]     # or DRY=1: same code on the CPU, tiny input (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
args=("$@")
if [ "${DRY:-0}" != 0 ]; then
  args=(--dry-run "${args[@]+"${args[@]}"}")
fi
exec "$PY" benchmarks/gpu.py "${args[@]+"${args[@]}"}"
