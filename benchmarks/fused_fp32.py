"""fp32 networks of every parity fixture's variant, with and without `FusedBlock` / `FusedStem` (issue #23).

The Predictor's fp32 on a CPU (the default where the CPU has no bf16 hardware) runs the ResNet blocks and stem with
their ReLUs and residual adds inside oneDNN's convolutions. This times each fixture model's network both ways,
interleaved in one process (rounds alternate which goes first; medians of the rounds' medians), and says whether the
outputs are bit-identical, at the fixture photo's test size.

    .venv/bin/python benchmarks/fused_fp32.py [--rounds 4] [--iters 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fixtures", default=str(ROOT.parent / "shared" / "fixtures"), help="parity fixtures folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from fastinst.engine.predictor import Predictor
    from fastinst.model import fuse
    from fastinst.model.preprocess import to_model_input
    from parity.fixture import fixture_model, open_fixture
    from realtime import cpu_flags, median_ms

    cpu, flags = cpu_flags()
    print(f"CPU: {cpu}\nflags: {flags}\ntorch {torch.__version__}, {args.threads} threads\n")
    print("| fixture | input | plain ms | fused ms | speed-up | outputs |")
    print("|---|---|---:|---:|---:|---|")
    shared = sorted(p.parent for p in Path(args.fixtures).glob("*/reference.npz"))
    for folder in shared or [ROOT / "tests" / "parity" / "data" / "fastinst_R50_ppm-fpn_x1_576-s0"]:
        fixture = open_fixture(folder)
        fused = Predictor(fixture_model(fixture), dtype="fp32").model
        available = fuse.pointwise_fusion_available
        fuse.pointwise_fusion_available = lambda model: False  # the same folded model with its plain blocks
        plain = Predictor(fixture_model(fixture), dtype="fp32").model
        fuse.pointwise_fusion_available = available
        assert any(isinstance(m, fuse.FusedBlock) for m in fused.modules())
        assert not any(isinstance(m, fuse.FusedBlock | fuse.FusedStem) for m in plain.modules())
        photo = fixture.arrays["input.0.original"]
        item = to_model_input(photo, fused.cfg.input.min_size_test, fused.cfg.input.max_size_test)
        with torch.inference_mode():
            images, _ = fused.preprocess([item])
            outputs, times = {}, {"plain": [], "fused": []}

            def network(model, images=images):
                return model.sem_seg_head.predictor(model.features(images))

            for name, model in (("plain", plain), ("fused", fused)):
                outputs[name] = network(model)
            for r in range(args.rounds):
                pair = [("plain", plain), ("fused", fused)]
                for name, model in pair if r % 2 else pair[::-1]:
                    times[name].append(median_ms(lambda m=model: network(m), args.iters))
        same = all(torch.equal(outputs["plain"][k], outputs["fused"][k]) for k in ("pred_logits", "pred_masks"))
        worst = max(
            ((outputs["plain"][k] - outputs["fused"][k]).abs().max() / outputs["plain"][k].abs().max()).item()
            for k in ("pred_logits", "pred_masks")
        )
        plain_ms, fused_ms = statistics.median(times["plain"]), statistics.median(times["fused"])
        shape = "x".join(str(s) for s in images.shape[-2:])
        print(
            f"| {folder.name} | {shape} | {plain_ms:.0f} | {fused_ms:.0f} | {plain_ms / fused_ms:.2f}x | "
            f"{'bit-identical' if same else f'max rel. diff {worst:.1e}'} |"
        )


if __name__ == "__main__":
    main()
