#!/usr/bin/env python
"""Compare fastinst with the official implementation's recorded outputs.

    python tools/check_parity.py ../shared/fixtures/*/        # full fixtures
    python tools/check_parity.py                              # the in-repo compact fixture

For each fixture folder (schema: the fixtures README; helpers in tests/parity/) build the variant named in its
metadata with the synthetic weights rebuilt from its keys.txt and seed, run its photos through our pre-processing
and model, and print one row per stored quantity; fixtures with a training part also get the loss, matching and
query-location check (mask losses through the tie interval of tests/parity/train.py). Exits 1 if anything is out of
tolerance, 2 if a folder is not a fixture.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

COMPACT = REPO / "tests" / "parity" / "data" / "fastinst_R50_ppm-fpn_x1_576-s0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", nargs="*", type=Path, help="fixture folders (default: the in-repo compact one)")
    parser.add_argument("--no-train", action="store_true", help="skip the training check")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args(argv)
    import torch

    from parity.compare import format_rows
    from parity.eval import check_eval
    from parity.fixture import fixture_model, open_fixture
    from parity.train import check_train

    if args.threads:
        torch.set_num_threads(args.threads)
    failed = []
    for path in args.fixtures or [COMPACT]:
        start = time.time()
        try:
            fx = open_fixture(path)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        model = fixture_model(fx)
        rows = check_eval(fx, model)
        if fx.has_training and not args.no_train:
            rows += check_train(fx, model)
        print(f"\n== {path}  ({time.time() - start:.1f} s)")
        print(format_rows(rows))
        bad = [r.name for r in rows if not r.ok]
        if bad:
            failed.append(f"{path} ({len(bad)} rows: {', '.join(bad[:3])})")
    print()
    if failed:
        print("PARITY FAILED: " + "; ".join(failed))
        return 1
    print(f"parity ok: {len(args.fixtures) or 1} fixture(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
