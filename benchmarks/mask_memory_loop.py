"""Post-processing in a loop that holds the previous image's results (`for r in stream:`), with one kept mask buffer
vs two (`fastinst.model.mask_memory.KEEP_BUFFERS`), interleaved rounds in one process (issue #23).

`instances` on the D1-R50 fixture's bf16 outputs for the 1080x810 photo (58 photo-wide masks), each call made while
the result before it is still held, as a `for` loop's variable holds it.

    .venv/bin/python benchmarks/mask_memory_loop.py [--rounds 10] [--calls 8]
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
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import fastinst.model.fastinst as fastinst_module
    import fastinst.model.mask_memory as memory
    import realtime as rt
    from fastinst.engine.predictor import Predictor
    from fastinst.model import postprocess

    cpu, flags = rt.cpu_flags()
    print(f"CPU: {cpu}\nflags: {flags}\ntorch {torch.__version__}, {args.threads} threads")
    predictor = Predictor(rt.build(None), dtype="auto")
    photo = rt.photo_of((1080, 810))
    saved = {}
    instances = postprocess.instances

    def grab(*a, **k):
        saved["args"] = (a, k)
        return instances(*a, **k)

    fastinst_module.instances = grab  # the network's outputs for the photo, as the user path passes them on
    predictor.predict_batch([photo])
    fastinst_module.instances = instances
    inputs, options = saved["args"]

    def loop(calls: int) -> list[float]:
        times, held = [], None
        for _ in range(calls):
            start = time.perf_counter()
            result = instances(*inputs, **options)  # `held` (the result before) is still referenced here
            times.append((time.perf_counter() - start) * 1e3)
            held = result
        del held
        return times[1:]

    kept = memory.KEEP_BUFFERS
    times: dict[int, list[float]] = {1: [], kept: []}
    for r in range(args.rounds):
        for count in (1, kept) if r % 2 else (kept, 1):
            memory.KEEP_BUFFERS = count
            memory._spare.clear()
            memory._idle.clear()
            times[count] += loop(args.calls)
    memory.KEEP_BUFFERS = kept
    print(f"\n{predictor.dtype} outputs, {args.rounds} rounds x {args.calls - 1} timed calls")
    print("| kept buffers | median ms | p90 ms | max ms |\n|---:|---:|---:|---:|")
    for count, values in times.items():
        values = sorted(values)
        p90 = values[int(0.9 * (len(values) - 1))]
        print(f"| {count} | {statistics.median(values):.1f} | {p90:.1f} | {values[-1]:.1f} |")


if __name__ == "__main__":
    main()
