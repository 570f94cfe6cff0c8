#!/usr/bin/env bash
# Run the test suite (fixture parity included when ../shared/fixtures exists).
set -euo pipefail
cd "$(dirname "$0")/.."
# chromium + its driver for the browser test of `fastinst app` (tests/test_app.py skips without them): Debian's
# packages, installed only for the tests, only when missing and we are root with apt-get; never fails the run
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
    >/dev/null 2>&1 || echo "note: chromium/chromium-driver not installed; the browser test of fastinst app will skip"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/python -m pytest tests "$@"
