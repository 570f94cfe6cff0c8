#!/usr/bin/env python
"""Compare fastinst with the official implementation's recorded outputs.

    python tools/check_parity.py ../shared/fixtures/*/

For each fixture directory (format: shared/fixtures/README.md) build the variant named in its metadata, load the
synthetic weights made from its keys.txt and seed, run the stored photos through our pre-processing and model, and
print one row per stored tensor. Fixtures with `train.*` keys also get the loss and matching check.
Exits 1 if anything is out of tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", nargs="+", type=Path, help="fixture directories")
    parser.add_argument("--no-train", action="store_true", help="skip the training-loss check")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args(argv)
    import torch

    from fastinst.errors import FastInstError
    from fastinst.parity import check_fixture

    if args.threads:
        torch.set_num_threads(args.threads)
    failed = []
    for d in args.fixtures:
        t0 = time.time()
        try:
            rows = check_fixture(d)
            if not args.no_train:
                import numpy as np

                from fastinst.losses.parity import check_train_parity
                from fastinst.parity import load_fixture

                if any(k.startswith("train.") for k in np.load(d / "reference.npz").files):
                    rows += check_train_parity(d, load_fixture(d)[2])
        except FastInstError as e:
            print(f"{d}: error: {e}")
            failed.append(str(d))
            continue
        print(f"\n== {d}  ({time.time() - t0:.1f} s)")
        print(f"{'tensor':<46} {'max|diff|':>11} {'scale':>11} {'tol':>10}  verdict")
        for row in rows:
            print(row.format())
        bad = [r.name for r in rows if not r.ok]
        if bad:
            failed.append(f"{d} ({len(bad)} rows: {', '.join(bad[:3])})")
    print()
    if failed:
        print("PARITY FAILED: " + "; ".join(failed))
        return 1
    print(f"parity ok: {len(args.fixtures)} fixture(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
