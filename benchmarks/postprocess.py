#!/usr/bin/env python
"""Time the official-style post-processing (`instances_reference`) against ours (`instances`) on CPU.

    .venv/bin/python benchmarks/postprocess.py [--threads 1] [--iters 20] [--json FILE]

Both take one image's (Q, K+1) class logits and (Q, H/8, W/8) mask logits and return the top-100 (query, class)
pairs with boolean masks at the original size. The official order upsamples all Q masks to the padded size and then
to the original size before picking the top 100; ours resizes only the queries the top-k keeps (same numbers).
Logits are drawn so the top 100 pairs use `--unique` distinct queries (real models: typically 30-70 of 100).
The last two columns: the same logits as a bf16 network gives them (`fastinst.model.span_masks`: the two resizes as
matmuls inside each mask's box, scores first on every third pixel row and column), and how they agree with ours on
the same bf16-rounded values in fp32 (every pair found again).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import torch

from fastinst.model.postprocess import instances, instances_reference

CASES = [  # (name, padded network input, resized image, original photo, masks)
    ("D1 576, 480x640 photo", (576, 768), (576, 768), (480, 640), "noise"),
    ("D1 576, 1080x810 photo (the fixture's)", (768, 576), (768, 576), (1080, 810), "noise"),
    ("D1 576, 1080x810 photo, object-sized masks", (768, 576), (768, 576), (1080, 810), "objects"),
    ("D3 640, 480x640 photo", (640, 864), (640, 853), (480, 640), "noise"),
    ("D1 576, 1080x1920 video frame", (448, 800), (437, 777), (1080, 1920), "noise"),
]


def make_outputs(padded, num_queries: int, num_classes: int, unique: int, masks: str = "noise", seed: int = 0):
    """Random logits where `unique` queries hold all of the confident (query, class) pairs. Masks: "noise" (logits
    of spread noise: every mask reaches across the whole image, the worst case, like the parity fixtures' synthetic
    weights) or "objects" (one elliptic blob per query, 2-40 % of the image's height: a trained model's masks)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_queries, num_classes + 1, generator=g)
    hot = torch.randperm(num_queries, generator=g)[:unique]
    logits[hot, :num_classes] += 6.0 + torch.rand(unique, num_classes, generator=g)
    h, w = padded[0] // 8, padded[1] // 8
    if masks == "noise":
        return logits, torch.randn(num_queries, h, w, generator=g) * 4
    ys, xs = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    centre = torch.rand(num_queries, 2, generator=g) * torch.tensor([h, w])
    radii = (0.01 + 0.19 * torch.rand(num_queries, 2, generator=g)) * h  # half-axes: 1-20 % of the height
    d = ((ys - centre[:, :1, None]) / radii[:, :1, None]) ** 2 + ((xs - centre[:, 1:, None]) / radii[:, 1:, None]) ** 2
    noise = torch.randn(num_queries, h, w, generator=g) * 0.5
    return logits, (8.0 * (1.0 - d)).clamp(-10.0, 8.0) + noise


def time_call(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--unique", type=int, default=50, help="distinct queries among the top 100 pairs")
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with torch.inference_mode():
        for name, padded, resized, original, kind in CASES:
            logits, masks = make_outputs(padded, 100, 80, args.unique, kind)
            ref = instances_reference(logits, masks, padded, resized, original)
            ours = instances(logits, masks, padded, resized, original)
            # the same instances: ours is sorted by final score, the official order keeps the class-probability one
            mine = {(int(q), int(c)): i for i, (q, c) in enumerate(zip(ours["queries"], ours["labels"], strict=True))}
            for i, (q, c) in enumerate(zip(ref["queries"], ref["labels"], strict=True)):
                j = mine[(int(q), int(c))]
                assert torch.equal(ref["masks"][i], ours["masks"][j]) and ref["scores"][i] == ours["scores"][j]
            call = (logits, masks, padded, resized, original)
            t_ref = time_call(functools.partial(instances_reference, *call), args.iters)
            t_ours = time_call(functools.partial(instances, *call), args.iters)
            # the mask logits of a bf16 network take `span_masks`: agreement with ours in fp32, and its time
            low = (logits, masks.to(torch.bfloat16), padded, resized, original)
            fp32 = instances(logits, masks.to(torch.bfloat16).float(), padded, resized, original)
            bf16 = instances(*low)
            pairs = {(int(q), int(c)): i for i, (q, c) in enumerate(zip(bf16["queries"], bf16["labels"], strict=True))}
            ious, diffs = [], []
            for i, (q, c) in enumerate(zip(fp32["queries"], fp32["labels"], strict=True)):
                j = pairs[(int(q), int(c))]
                a, b = fp32["masks"][i], bf16["masks"][j]
                ious.append(float((a & b).sum()) / max(1, int((a | b).sum())))
                diffs.append(abs(float(fp32["scores"][i] - bf16["scores"][j])))
            t_bf16 = time_call(functools.partial(instances, *low), args.iters)
            rows.append(
                {
                    "case": name,
                    "padded": padded,
                    "original": original,
                    "unique_queries": int(ours["queries"].unique().numel()),
                    "reference_ms": round(t_ref, 1),
                    "ours_ms": round(t_ours, 1),
                    "saved_ms": round(t_ref - t_ours, 1),
                    "speedup": round(t_ref / t_ours, 2),
                    "bf16_logits_ms": round(t_bf16, 1),
                    "bf16_min_iou": round(min(ious), 4),
                    "bf16_max_score_diff": round(max(diffs), 5),
                }
            )
    print(f"threads {args.threads}, median of {args.iters}")
    print(
        "| case | unique queries | official-style ms | ours ms | saved ms | speed-up | bf16 logits ms | "
        "bf16 vs ours: min mask IoU, max score diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['unique_queries']} | {r['reference_ms']} | {r['ours_ms']} | {r['saved_ms']} | "
            f"{r['speedup']}x | {r['bf16_logits_ms']} | {r['bf16_min_iou']}, {r['bf16_max_score_diff']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "iters": args.iters, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
