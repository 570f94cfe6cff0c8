"""The deformable convolutions of the -vd-dcn variants at inference: torchvision's `deform_conv2d` against
`fastinst.model.backbone.sampled_deform_conv` (grid_sample + matmul, what `DeformConv` runs without autograd), per
layer shape and for the whole D3-R50-vd-DCN network, in fp32 and bf16 (autocast), in one run.

    .venv/bin/python benchmarks/deform_conv.py [--threads 2] [--iters 5] [--size 640 864]

Weights: random (speed does not depend on them); offsets: random, several pixels (taps between pixels and outside).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torchvision.ops import deform_conv2d

import fastinst.model.backbone as backbone


def median_ms(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def torchvision_op(x, offset, weight, stride):
    return deform_conv2d(x.float(), offset.float(), weight.float(), stride=stride, padding=1)


@contextlib.contextmanager
def using(op):
    """Inference `DeformConv` runs `op` instead of `sampled_deform_conv` inside the block."""
    kept = backbone.sampled_deform_conv
    backbone.sampled_deform_conv = op
    try:
        yield
    finally:
        backbone.sampled_deform_conv = kept


def main() -> int:
    import fastinst
    from fastinst.engine.predictor import Predictor

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--size", type=int, nargs=2, default=(640, 864), metavar=("H", "W"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from realtime import cpu_flags  # benchmarks/realtime.py: the lscpu model name and SIMD flags

    cpu, flags = cpu_flags()
    print(f"CPU: {cpu}\nflags: {flags}\ntorch {torch.__version__}, {args.threads} threads")
    h, w = args.size
    print("| layer (C, H', W') | dtype | torchvision ms | sampled ms | speed-up |")
    print("|---|---|---:|---:|---:|")
    for c, s in ((128, 8), (256, 16), (512, 32)):
        conv = backbone.DeformConv(c, c, 1).eval()
        x = torch.randn(1, c, h // s, w // s)
        offset = torch.randn(1, 18, h // s, w // s) * 2
        for dtype in ("fp32", "bf16"):
            cast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
            with torch.inference_mode(), cast:
                old = median_ms(lambda conv=conv, x=x, o=offset: torchvision_op(x, o, conv.weight, 1), args.iters)
                new = median_ms(lambda conv=conv, x=x, o=offset: conv(x, o), args.iters)
            print(f"| {c}, {h // s}, {w // s} | {dtype} | {old:.1f} | {new:.1f} | {old / new:.2f}x |")
    model = fastinst.build_model("fastinst-d3-r50vd-dcn").eval()
    print(f"\nD3-R50-vd-DCN network at {h}x{w} (BN folded, channels_last, as the Predictor runs it):")
    print("| dtype | torchvision DCN ms | sampled DCN ms | speed-up |")
    print("|---|---:|---:|---:|")
    images = torch.randn(1, 3, h, w).contiguous(memory_format=torch.channels_last)
    for dtype in ("fp32", "bf16"):
        predictor = Predictor(model, dtype=dtype)
        net = predictor.model

        def run(net=net, predictor=predictor):
            with torch.inference_mode(), predictor._autocast():
                net.sem_seg_head.predictor(net.features(images))

        with using(torchvision_op):
            old = median_ms(run, args.iters)
        new = median_ms(run, args.iters)
        print(f"| {dtype} | {old:.0f} | {new:.0f} | {old / new:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
