#!/usr/bin/env python
"""Write the in-repository parity fixture (tests/parity/data/<name>/) from a full official fixture.

    python tools/make_compact_fixture.py ../shared/fixtures/fastinst_R50_ppm-fpn_x1_576-s0

A full fixture (schema: the fixtures README) is ~14 MB, mostly random draws, resized photos and dense feature maps.
The compact copy keeps, in the same schema so the same checks read it: the two original photos, the final class
logits, the top-k proposal indices, every instance (scores, classes, keys, packed masks), a channel/query subsample of
the proposal logits, final masks, backbone and pixel-decoder outputs, and the whole training part except the draws,
which are replaced by their shapes (they are regenerated from the recorded torch seed, see tests/parity/fixture.py;
tests/losses/test_fixture_losses.py checks the regeneration against a full fixture). keys.txt is copied as is.
Weights are never stored: tests/parity/weights.py rebuilds them from keys.txt and the seed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LIMIT = 5_000_000  # bytes: the compact fixture must stay small enough to live in git

# key -> subsample step (queries or channels, dim 1): big float maps are kept at a stride, small ones in full
SUBSAMPLE = {
    "eval.proposal_cls_logits": 4,
    "eval.pred_masks": 10,
    "eval.backbone.res3": 64,
    "eval.backbone.res4": 128,
    "eval.backbone.res5": 128,
    "eval.pixel_decoder.E5": 16,
    "eval.pixel_decoder.E4": 16,
    "eval.pixel_decoder.E3": 32,
}
KEEP_FULL = re.compile(
    r"^(meta_json|input\.\d+\.original|eval\.pred_logits|eval\.query_proposal\.topk_indices|"
    r"eval\.instances\..*|train\.(loss|loss_weighted|match|gt)\..*|train\.query_locations|"
    r"train\.rand\.\d+\.role)$"
)


def compact(src: Path, dest: Path) -> int:
    with np.load(src / "reference.npz") as npz:
        full = {k: npz[k] for k in npz.files}
    out: dict[str, np.ndarray] = {}
    for key, value in full.items():
        if KEEP_FULL.match(key):
            out[key] = value
        elif m := re.match(r"^train\.rand\.(\d+)\.value$", key):
            out[f"train.rand.{m.group(1)}.shape"] = np.asarray(value.shape, dtype=np.int64)
    for base, step in SUBSAMPLE.items():
        stored = [k for k in full if re.fullmatch(re.escape(base) + r"(\.everyq?\d+)?", k)]
        if not stored:
            continue
        key = stored[0]
        m = re.search(r"\.every(q?)(\d+)$", key)
        have = int(m.group(2)) if m else 1
        kind = m.group(1) if m else ("q" if base == "eval.pred_masks" else "")
        step = max(step // have, 1) * have  # a multiple of the stored stride
        out[f"{base}.every{kind}{step}"] = full[key][:, :: step // have]
    meta = json.loads(str(full["meta_json"]))
    meta["compact"] = {"source": src.name, "subsample": SUBSAMPLE, "draws": "regenerated from train.train_torch_seed"}
    out["meta_json"] = np.asarray(json.dumps(meta))
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / "reference.tmp.npz"
    np.savez_compressed(tmp, **out)
    tmp.replace(dest / "reference.npz")
    shutil.copyfile(src / "keys.txt", dest / "keys.txt")
    return (dest / "reference.npz").stat().st_size + (dest / "keys.txt").stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixture", type=Path, help="a full fixture folder (keys.txt + reference.npz)")
    parser.add_argument("--output", type=Path, help="default: tests/parity/data/<fixture name>")
    args = parser.parse_args(argv)
    if not (args.fixture / "reference.npz").is_file():
        print(f"{args.fixture}: not a fixture folder (no reference.npz)", file=sys.stderr)
        return 2
    dest = args.output or REPO / "tests" / "parity" / "data" / args.fixture.name
    size = compact(args.fixture, dest)
    print(f"wrote {dest} ({size / 1e6:.2f} MB)")
    if size > LIMIT:
        print(f"{dest}: {size} bytes, over the {LIMIT}-byte limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
