"""Parity with the official FastInst implementation: fixture reading, weights, eval and training checks.

Used by the tests (tests/model/test_parity.py, tests/losses/test_fixture_losses.py) and by tools/check_parity.py; it
lives outside the installed package on purpose. See tests/parity/README.md.
"""
