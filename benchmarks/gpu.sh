#!/usr/bin/env bash
# The GPU benchmarks, one after the other, both writing into --out (default benchmarks/results/gpu):
# 1. benchmarks/gpu.py: latency of the five published variants (fp32 / bf16 / fp16 x eager / CUDA graphs /
#    torch.compile), network and full pipeline with post-processing -> gpu_benchmark.md + gpu_benchmark.json;
#    ~8 minutes with its default --budget-s 420.
# 2. benchmarks/gpu_train.py: the D1-R50 training step of our trainer (fp32 / fp16 AMP / bf16 AMP, batch 16 at
#    640 px on one GPU) -> gpu_train.md + gpu_train.json; ~2.5 minutes with its default --budget-s 150.
# Together under ~10 minutes on one GPU. The arguments are gpu.py's; gpu_train.py gets only --out and --dry-run from
# them (run it directly for its other options). SKIP_TRAIN=1 runs gpu.py alone. The exit status is gpu.py's, or
# gpu_train.py's where gpu.py succeeded; a usage error or no CUDA device (gpu.py's status 2) stops before training.
#   benchmarks/gpu.sh [--out DIR] [--budget-s S] [--variants ...] [--dtypes ...] [--modes ...]
#   benchmarks/gpu.sh --dry-run [--out DIR]     # or DRY=1: same code on the CPU, tiny input (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
args=("$@")
if [ "${DRY:-0}" != 0 ]; then
  args=(--dry-run "${args[@]+"${args[@]}"}")
fi
train_args=()
prev=""
for a in "${args[@]+"${args[@]}"}"; do
  if [ "$prev" = --out ]; then
    train_args+=(--out "$a")
  fi
  case "$a" in
    --dry-run | --out=* | -h | --help) train_args+=("$a") ;;
  esac
  prev=$a
done
rc=0
"$PY" benchmarks/gpu.py "${args[@]+"${args[@]}"}" || rc=$?
if [ "$rc" = 2 ] || [ "${SKIP_TRAIN:-0}" != 0 ]; then
  exit "$rc"
fi
train_rc=0
"$PY" benchmarks/gpu_train.py "${train_args[@]+"${train_args[@]}"}" || train_rc=$?
if [ "$rc" != 0 ]; then
  exit "$rc"
fi
exit "$train_rc"
