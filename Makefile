# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install, train + evaluate the CPU demo on generated data
#   make test   - create .venv, install, run the test suite
#   make test-fast - the suite without the tests marked slow (tests/conftest.py), for a quick loop
#   make lint   - create .venv, install, run ruff (lint + format check) and mypy
.PHONY: setup demo test test-fast lint parity
LINT_PATHS = src tests tools benchmarks scripts
setup:
	bash scripts/setup.sh
demo: setup
	.venv/bin/fastinst demo
test: setup
	bash scripts/test.sh
test-fast: setup
	bash scripts/test.sh -m "not slow"
lint: setup
	.venv/bin/ruff check $(LINT_PATHS)
	.venv/bin/ruff format --check $(LINT_PATHS)
	.venv/bin/mypy
parity: setup
	.venv/bin/python tools/check_parity.py ../shared/fixtures/*/
