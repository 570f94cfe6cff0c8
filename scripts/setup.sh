#!/usr/bin/env bash
# Create .venv in the repository root and install fastinst with everything its tests and commands use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch/torchvision first, pinned to the releases this project is tested with (CPU or CUDA build alike)
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
# all = every extra: video (av), onnx, tensorboard, plots (matplotlib), test (pytest), dev (ruff, mypy: `make lint`)
.venv/bin/pip install -q -e ".[all]"
