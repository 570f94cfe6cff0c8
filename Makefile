# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install, train + evaluate the CPU demo on generated data
#   make test   - create .venv, install, run the test suite
.PHONY: setup demo test parity
setup:
	bash scripts/setup.sh
demo: setup
	.venv/bin/fastinst demo
test: setup
	bash scripts/test.sh
parity: setup
	.venv/bin/python tools/check_parity.py ../shared/fixtures/*/
