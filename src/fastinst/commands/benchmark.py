"""`fastinst benchmark --model NAME`: latency of the network and of the full pipeline, against a measured matmul peak.

Times (after `--warmup` runs, `--iters` runs each, median and p90):
* network: normalised padded batch (B, 3, H, W) on the device -> `pred_logits`, `pred_masks`;
* pipeline: decoded uint8 H x W x 3 images -> normalise + pad -> network -> top-100 instances with boolean masks at
  H x W, back on the CPU as numpy (no resize: the images are already at the network size).
Reports params, GFLOPs (fvcore convention: one multiply-add = one flop), the achieved rate 2 x MACs / latency, a
big square matmul's rate measured in the same run on the same device and dtype, before and after the model runs
(the practical peak: the higher of the two), the "floor" 2 x MACs / peak, and the goal floor / 0.85.
`--json FILE` writes everything.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import FastInstError
from ._options import add_device, add_size, non_negative_int, positive_int

BACKENDS = ("torch", "compile", "onnxruntime", "openvino")
DTYPES = ("fp32", "fp16", "bf16")
GOAL_FRACTION = 0.85


def add_parser(sub) -> None:
    p = sub.add_parser(
        "benchmark",
        help="latency, FPS and GFLOP/s of a variant on this machine",
        description="Latency of the network and of the full image -> masks pipeline, with GFLOPs and "
        "the fraction of a matmul peak measured in the same run.",
    )
    p.add_argument("--model", default="fastinst-d1-r50", help="variant name or alias (default fastinst-d1-r50)")
    p.add_argument("--weights", help="checkpoint (default: random init; timings do not depend on the weights)")
    add_size(p, "input height and width, multiples of 32 (default: a 480x640 photo at the test size)")
    add_device(p)
    p.add_argument("--dtype", default="fp32", choices=DTYPES, help="autocast precision (default fp32)")
    p.add_argument(
        "--backend", default="torch", choices=BACKENDS, help="eager PyTorch, torch.compile, onnxruntime or OpenVINO"
    )
    p.add_argument(
        "--fuse",
        action="store_true",
        help="prepare the network as predict does: BatchNorms folded (with --channels-last on a CPU: blocks fused)",
    )
    p.add_argument("--channels-last", action="store_true", help="channels_last weights and inputs")
    p.add_argument("--threads", type=non_negative_int, default=0, help="CPU threads (default: torch's default)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--iters", type=positive_int, default=20, help="timed runs per measurement (default 20)")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--json", help="write the results to this JSON file")


# ---------------------------------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------------------------------


def time_fn(fn: Callable[[], object], iters: int, warmup: int, sync: Callable[[], None]) -> dict:
    """Call `fn` warmup + iters times; statistics of the timed calls in milliseconds."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    p90 = times[min(len(times) - 1, int(np.ceil(0.9 * len(times))) - 1)]
    return {
        "median_ms": statistics.median(times),
        "p90_ms": p90,
        "mean_ms": statistics.fmean(times),
        "min_ms": times[0],
    }


def matmul_peak(device, dtype, sync, n: int | None = None, iters: int = 10) -> dict:
    """GFLOP/s (2 n^3 per product) of an n x n matmul on `device` in `dtype`: the practical compute peak."""
    import torch

    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    stats = time_fn(lambda: torch.mm(a, b), iters, 2, sync)
    return {"n": n, "median_ms": stats["median_ms"], "gflops_per_s": 2 * n**3 / (stats["median_ms"] * 1e-3) / 1e9}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------------------------------
# Backends: (network(images), pipeline(list of HxWx3 uint8)) callables
# ---------------------------------------------------------------------------------------------------------------------


def _torch_backend(model, args, device, autocast):
    import torch

    from ..export import InferenceNet

    net: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = InferenceNet(model)
    if args.backend == "compile":
        net = torch.compile(net)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    def network(images):
        with torch.inference_mode(), autocast():
            return net(images.contiguous(memory_format=fmt))

    def pipeline(arrays):
        batch = [{"image": torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))} for a in arrays]
        with torch.inference_mode(), autocast():
            images, sizes = model.preprocess(batch)
            logits, masks = net(images.contiguous(memory_format=fmt))
            out = model.postprocess({"pred_logits": logits, "pred_masks": masks}, batch, images.shape[-2:], sizes)
        return [{k: v.cpu().numpy() for k, v in o.items()} for o in out]

    return network, pipeline


def _exported_backend(model, args, size, workdir: Path):
    """The model exported to ONNX in `workdir`, run by onnxruntime or OpenVINO (`fastinst.runtimes`)."""
    import torch

    from ..export import export_onnx
    from ..runtimes import OnnxModel, OpenVinoModel

    path = export_onnx(model, workdir / "model.onnx", size=size, dynamic=args.batch_size > 1)
    threads = args.threads or None
    if args.backend == "onnxruntime":
        runtime: OnnxModel | OpenVinoModel = OnnxModel(path, model.cfg, threads=threads)
    else:
        runtime = OpenVinoModel(path, model.cfg, dtype=args.dtype, threads=threads)

    def network(images):
        return runtime.forward_raw(images)

    def pipeline(arrays):
        batch = [{"image": torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))} for a in arrays]
        return [{k: v.numpy() for k, v in o.items()} for o in runtime(batch)]

    return network, pipeline


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict:
    import torch

    from ..export import check_size, default_size
    from ..factory import load_model, resolve_device
    from ..flops import count_flops
    from ..model.fuse import optimize_for_inference

    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        raise FastInstError("--iters and --batch-size must be at least 1, --warmup at least 0")
    exported = args.backend in ("onnxruntime", "openvino")
    auto_cpu = exported and args.device == "auto"  # onnxruntime and OpenVINO are timed on the CPU
    device = resolve_device("cpu" if auto_cpu else args.device)
    if args.backend == "onnxruntime" and (args.dtype != "fp32" or device.type != "cpu"):
        raise FastInstError("--backend onnxruntime is benchmarked on --device cpu with --dtype fp32")
    if args.backend == "openvino" and device.type != "cpu":
        raise FastInstError("--backend openvino is benchmarked on --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    low = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    with warnings.catch_warnings():  # random weights time the same as trained ones: no warning needed here
        warnings.simplefilter("ignore")
        model = load_model(args.model, args.weights, "cpu")
    cfg = model.cfg
    size = check_size(args.size or default_size(cfg), cfg.model.size_divisibility)
    with torch.no_grad():
        flops = count_flops(model, *size)
    params = sum(p.numel() for p in model.parameters())
    if args.fuse:  # as the Predictor prepares it: eager on a CPU in fp32 / bf16 + channels_last, the blocks fused
        as_predict = args.backend == "torch" and device.type == "cpu" and low in (None, torch.bfloat16)
        dtype = (low or torch.float32) if as_predict else None
        model = optimize_for_inference(model, channels_last=args.channels_last, inplace=True, dtype=dtype)
    elif args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def autocast():
        return torch.autocast(device.type, dtype=low) if low is not None else contextlib.nullcontext()

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(args.batch_size)]
    before = matmul_peak(device, low or torch.float32, sync)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exported:
            network, pipeline = _exported_backend(model, args, size, Path(tmp))
            images = torch.zeros(args.batch_size, 3, *size)
        else:
            network, pipeline = _torch_backend(model, args, device, autocast)
            images = torch.zeros(args.batch_size, 3, *size, device=device)
        net_stats = time_fn(lambda: network(images), args.iters, args.warmup, sync)
        pipe_stats = time_fn(lambda: pipeline(arrays), args.iters, args.warmup, sync)
    after = matmul_peak(device, low or torch.float32, sync)
    # measured before and after the model runs: on a shared machine they differ, and the higher one is the peak
    peak = {
        **max(before, after, key=lambda m: m["gflops_per_s"]),
        "before_gflops_per_s": before["gflops_per_s"],
        "after_gflops_per_s": after["gflops_per_s"],
    }
    b = args.batch_size
    macs_net = flops["backbone"] + flops["pixel_decoder"] + flops["decoder"]
    macs_pipe = flops["total"]
    rate = peak["gflops_per_s"] * 1e9
    result = {
        "model": cfg.name,
        "size": list(size),
        "batch_size": b,
        "device": str(device),
        "dtype": args.dtype,
        "backend": args.backend,
        "fused": args.fuse,
        "channels_last": args.channels_last,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "iters": args.iters,
        "warmup": args.warmup,
        "params": params,
        "gflops": {k: round(v / 1e9, 3) for k, v in flops.items()},
        "network": {**net_stats, "fps": 1e3 * b / net_stats["median_ms"]},
        "pipeline": {**pipe_stats, "fps": 1e3 * b / pipe_stats["median_ms"]},
        "matmul": peak,
    }
    for key, macs in (("network", macs_net), ("pipeline", macs_pipe)):
        stats = result[key]
        stats["achieved_gflops_per_s"] = 2 * macs * b / (stats["median_ms"] * 1e-3) / 1e9
        stats["fraction_of_peak"] = stats["achieved_gflops_per_s"] / peak["gflops_per_s"]
        stats["floor_ms"] = 2 * macs * b / rate * 1e3
        stats["goal_ms"] = stats["floor_ms"] / GOAL_FRACTION
        stats["goal_met"] = stats["median_ms"] <= stats["goal_ms"]
    result["machine"] = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if args.backend == "onnxruntime":
        import onnxruntime

        result["machine"]["onnxruntime"] = onnxruntime.__version__
    if args.backend == "openvino":
        import openvino

        result["machine"]["openvino"] = openvino.__version__
    return result


def run(args: argparse.Namespace) -> int:
    json_path = _check_json(args)  # before the (minutes-long) benchmark, not after it
    result = benchmark(args)
    h, w = result["size"]
    print(
        f"{result['model']}  {h}x{w}  batch {result['batch_size']}  {result['device']} "
        f"({result['machine']['device_name']}, {result['threads'] or '-'} threads)  {result['dtype']}  "
        f"{result['backend']}{'  fused' if result['fused'] else ''}"
        f"{'  channels_last' if result['channels_last'] else ''}"
    )
    print(
        f"  params {result['params'] / 1e6:.2f} M   GFLOPs {result['gflops']['total']:.2f} "
        f"(network {result['gflops']['total'] - result['gflops']['postprocess']:.2f})   "
        f"matmul peak {result['matmul']['gflops_per_s']:.1f} GFLOP/s"
    )
    print(
        f"  {'':<10}{'median ms':>10}{'p90 ms':>9}{'FPS':>8}{'GFLOP/s':>9}{'of peak':>9}{'floor ms':>10}{'goal ms':>9}"
    )
    for key in ("network", "pipeline"):
        s = result[key]
        print(
            f"  {key:<10}{s['median_ms']:>10.1f}{s['p90_ms']:>9.1f}{s['fps']:>8.2f}{s['achieved_gflops_per_s']:>9.1f}"
            f"{s['fraction_of_peak']:>9.1%}{s['floor_ms']:>10.1f}{s['goal_ms']:>9.1f}"
        )
    if json_path is not None:
        from ..files import write_text

        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_text(json_path, json.dumps(result, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0


def _check_json(args: argparse.Namespace) -> Path | None:
    """`--json FILE` as a `Path` once `check_output` found it writable (its folder may still be created), else a
    one-line `FastInstError`; never onto the weights or a YAML config given."""
    if not args.json:
        return None
    from ..files import check_output

    try:
        return check_output(args.json, inputs=[p for p in (args.weights, args.model) if p], kind="file")
    except FastInstError as e:  # check_output speaks of --output, the usual name of the flag
        raise FastInstError(str(e).replace("--output", "--json")) from None
