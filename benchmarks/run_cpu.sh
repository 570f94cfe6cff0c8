#!/usr/bin/env bash
# CPU results for benchmarks/README.md: D1-R50 at 576x768, fp32, batch 1 (eager, fused, fused + channels_last,
# onnxruntime, torch.compile), each with 2 threads (as asked) and 1 thread (see the README on the shared machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results
mkdir -p "$OUT"
common=(--model fastinst-d1-r50 --size 576 768 --device cpu --dtype fp32 --batch-size 1 --iters "${ITERS:-10}" --warmup 2)
for t in ${THREADS:-2 1}; do
  $PY -m fastinst benchmark "${common[@]}" --threads "$t" --json "$OUT/cpu_d1-r50_576_t${t}_eager.json"
  $PY -m fastinst benchmark "${common[@]}" --threads "$t" --fuse --json "$OUT/cpu_d1-r50_576_t${t}_fused.json"
  $PY -m fastinst benchmark "${common[@]}" --threads "$t" --fuse --channels-last --json "$OUT/cpu_d1-r50_576_t${t}_fused_cl.json"
  $PY -m fastinst benchmark "${common[@]}" --threads "$t" --fuse --backend onnxruntime --json "$OUT/cpu_d1-r50_576_t${t}_fused_ort.json"
  if [ -n "${COMPILE:-}" ]; then
    $PY -m fastinst benchmark "${common[@]}" --threads "$t" --fuse --backend compile --json "$OUT/cpu_d1-r50_576_t${t}_fused_compile.json"
  fi
done
