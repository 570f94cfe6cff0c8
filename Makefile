# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install, train + evaluate the CPU demo on generated data
#   make test   - create .venv, install, run the test suite
#   make lint   - create .venv, install, run ruff (lint + format check) and mypy
.PHONY: setup demo test lint parity
LINT_PATHS = src tests tools benchmarks scripts
setup:
	bash scripts/setup.sh
demo: setup
	.venv/bin/fastinst demo
test: setup
	bash scripts/test.sh
lint: setup
	.venv/bin/ruff check $(LINT_PATHS)
	.venv/bin/ruff format --check $(LINT_PATHS)
	.venv/bin/mypy
parity: setup
	.venv/bin/python tools/check_parity.py ../shared/fixtures/*/
