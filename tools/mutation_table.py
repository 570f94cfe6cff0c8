#!/usr/bin/env python
"""Run the loss tests once per deliberate bug (tests/parity/mutations.py) and print which tests caught it.

    python tools/mutation_table.py                 # every mutation, tests/losses
    python tools/mutation_table.py dice-smoothing  # one

A mutation that no test catches is reported as SURVIVED and makes the exit status 1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def run(mutation: str, paths: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "parity.mutations", "-rf"]
    cmd += ["--mutation", mutation, *paths]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False).stdout
    return sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)))


def main(argv: list[str] | None = None) -> int:
    from parity.mutations import MUTATIONS

    names = (argv if argv is not None else sys.argv[1:]) or list(MUTATIONS)
    survived = 0
    print("| mutation | what it breaks | tests that failed |\n|---|---|---|")
    for name in names:
        failed = run(name, ["tests/losses"])
        survived += not failed
        doc = (MUTATIONS[name].__doc__ or "").strip()
        shown = "<br>".join(f.replace("tests/losses/", "") for f in failed) if failed else "**SURVIVED**"
        print(f"| `{name}` | {doc} | {shown} |", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
