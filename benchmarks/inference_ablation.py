"""What the user path's preparation buys, measured side by side: BN folding, channels_last, post-processing in pairs.

    .venv/bin/python benchmarks/inference_ablation.py [--threads 2] [--iters 4]

Network variants (D1-R50, random weights, 768x576, fp32), run interleaved so that machine noise hits them alike:
the unfused NCHW network (the old default), BN folded, BN folded + channels_last (today's `Predictor`).
Post-processing of 58 masks at 1080x810: the official all-at-once passes vs `binary_masks` (two masks at a time);
the masks must come out bit-identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> int:
    import fastinst
    from fastinst.export import InferenceNet
    from fastinst.model.fuse import optimize_for_inference
    from fastinst.model.postprocess import _full_size, binary_masks

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = fastinst.build_model("fastinst-d1-r50").eval()
    variants = {
        "unfused, NCHW (old default)": (model, False),
        "BN folded, NCHW": (optimize_for_inference(model), False),
        "BN folded, channels_last (Predictor)": (optimize_for_inference(model, channels_last=True), True),
    }
    x0 = torch.randn(1, 3, 768, 576)
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for _ in range(args.iters + 1):  # the first round warms up
            for name, (net, channels_last) in variants.items():
                x = x0.contiguous(memory_format=torch.channels_last) if channels_last else x0
                start = time.perf_counter()
                InferenceNet(net)(x)
                times[name].append(time.perf_counter() - start)
    print(f"D1-R50 network, 768x576, fp32, {args.threads} threads, median of {args.iters}:")
    for name, t in times.items():
        print(f"  {name:<40} {1e3 * statistics.median(t[1:]):7.0f} ms")

    logits = torch.randn(58, 96, 72, generator=torch.Generator().manual_seed(0)) * 4
    case = (logits, (768, 576), (768, 576), (1080, 810))

    def all_at_once():
        probs = _full_size(*case).sigmoid_()
        binary = probs > 0.5
        return binary, probs.masked_fill_(~binary, 0).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)

    post = {"all at once (official passes)": all_at_once, "two at a time (binary_masks)": lambda: binary_masks(*case)}
    post_times: dict[str, list[float]] = {k: [] for k in post}
    with torch.inference_mode():
        assert torch.equal(all_at_once()[0], binary_masks(*case)[0]), "masks differ"
        for _ in range(args.iters + 1):
            for name, fn in post.items():
                start = time.perf_counter()
                fn()
                post_times[name].append(time.perf_counter() - start)
    print("post-processing of 58 masks to 1080x810 (masks bit-identical):")
    for name, t in post_times.items():
        print(f"  {name:<40} {1e3 * statistics.median(t[1:]):7.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
