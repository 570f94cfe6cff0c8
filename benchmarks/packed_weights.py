"""The D1-R50 user path with the fused convolutions' weights packed once per input shape vs reordered by oneDNN at
every call (`fastinst.model.fuse.packed_weight`), interleaved rounds in one process (issue #23).

`Predictor.detect` on the fixture photo at 1080x810 (instances >= 0.3), each round a warm-up call and `--calls` timed
ones per mode, the modes' order alternating between rounds; medians of the rounds' medians. `--alternate` feeds a
1080x810 and an 810x1080 photo in turn, so each call meets a new input size and packs again (the worst case).
Also checks that both modes give the same instances, bit for bit.

    .venv/bin/python benchmarks/packed_weights.py [--dtype bf16|fp32] [--rounds 8] [--calls 5] [--alternate]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--alternate", action="store_true", help="a new input size at every call")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import fastinst.model.fuse as fuse
    import realtime as rt
    from fastinst.engine.predictor import Predictor

    cpu, flags = rt.cpu_flags()
    print(f"CPU: {cpu}\nflags: {flags}\ntorch {torch.__version__}, {args.threads} threads, {args.dtype}")
    predictor = Predictor(rt.build(None), args.dtype)
    photos = [rt.photo_of((1080, 810))] + ([rt.photo_of((810, 1080))] if args.alternate else [])
    modes = {"reordered at every call": lambda conv, x: conv.weight, "packed once per shape": fuse.packed_weight}

    found = []
    for pack in modes.values():
        fuse.packed_weight = pack
        found.append(predictor.detect(photos[:1], 0.0)[0])
    same = all(torch.equal(found[0][k], found[1][k]) for k in ("masks", "scores", "labels"))
    print(f"same instances, bit for bit: {same}")

    times: dict[str, list[float]] = {name: [] for name in modes}
    call = 0
    for r in range(args.rounds):
        for name in list(modes) if r % 2 == 0 else list(modes)[::-1]:
            fuse.packed_weight = modes[name]
            predictor.detect([photos[call % len(photos)]], 0.3)
            call += 1
            ms = []
            for _ in range(args.calls):
                start = time.perf_counter()
                predictor.detect([photos[call % len(photos)]], 0.3)
                ms.append((time.perf_counter() - start) * 1000)
                call += 1
            times[name].append(statistics.median(ms))
    for name, ms in times.items():
        print(f"{name:24s} median {statistics.median(ms):7.1f} ms   rounds {[round(m) for m in ms]}")


if __name__ == "__main__":
    main()
