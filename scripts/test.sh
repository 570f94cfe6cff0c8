#!/usr/bin/env bash
# Run the test suite (fixture parity included when ../shared/fixtures exists).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/python -m pytest tests "$@"
