#!/usr/bin/env python
"""GPU latency of the five published FastInst variants: fp32 / bf16 / fp16 x eager / CUDA graphs / torch.compile.

    benchmarks/gpu.sh [--out DIR] [--budget-s 420] [--variants ...] [--dtypes ...] [--modes ...]
    benchmarks/gpu.sh --dry-run [--out DIR]        # the same code on the CPU, tiny input, 1 iteration (CI)

Every row is one (variant, dtype, mode), batch 1, at the variant's test size: a 480x640 photo after the official test
resize (576x768 for D1, 640x853 padded to 640x864 for D3; `fastinst.export.default_size`). The model has its
BatchNorms folded (`fastinst.model.fuse.optimize_for_inference`), channels_last weights and is cast once to the dtype.

* network: the normalised, padded (1, 3, H, W) input already on the device -> (pred_logits, pred_masks);
* pipeline: the decoded uint8 H x W x 3 image in host memory -> device -> normalise + pad -> network ->
  `fastinst.model.postprocess.instances` at the image's size with score threshold 0.3 (`--score-threshold`) ->
  masks, scores, labels back in host memory as numpy;
* top-100 pipeline: the same with threshold 0, the official top-100 instances (the evaluation setting). With random
  weights no class probability reaches 0.3, so the thresholded pipeline post-processes no mask at all (its
  `instances` column says how many it kept) and the top-100 pipeline is the upper bound of post-processing cost.

Modes: `eager`; `graphs` (the network captured once in a CUDA graph, replayed; pre- and post-processing stay eager,
their shapes depend on the data); `compile` (`torch.compile`, default inductor mode, static shapes; the compile time
is in the JSON as `setup_s`); `compile+graphs` (the compiled network captured in a CUDA graph). Times: wall clock
around each call with `torch.cuda.synchronize`, median (and p90) of `--iters` calls after `--warmup` calls.

Checks, per row: every output finite; eager rows compare the pixel decoder's features with the fp32 model's on the
same input (relative max error), other modes compare their outputs with eager in the same dtype. (Outputs of two
dtypes are not compared: with random weights the query selection's near-ties flip.)

Weights are random unless `--weights official` (downloaded or cached releases). A random ResNet's frozen BatchNorms
are identities, so its activations grow past fp16's range (~6e5 in R101's res5) where a trained network's stay near
unit scale: with random weights the backbone's BatchNorm statistics are first set from one random image
(`calibrate_batchnorms`). Timings do not depend on the values otherwise.

Each row runs inside its own try: a failure (compile error, out of memory, ...) gives "failed: <reason>" and the next
row runs. `--budget-s` bounds the whole run: a row that cannot start in the time left is "skipped (time budget)",
one still running when it ends is stopped (SIGALRM) and "skipped (time budget: stopped ...)". Rows run cheapest
first: eager, then CUDA graphs for every variant and dtype, then compile (low precision first), so a short budget
loses the compile rows. Results (markdown table + JSON) are rewritten after every row into `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import itertools
import json
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastinst.config import ALIASES, ConfigError, canonical_name
from fastinst.export import InferenceNet, default_size
from fastinst.factory import build_model, load_model
from fastinst.flops import count_flops
from fastinst.model.backbone import FrozenBatchNorm2d
from fastinst.model.fastinst import FastInst
from fastinst.model.fuse import optimize_for_inference
from fastinst.model.postprocess import instances
from fastinst.model.preprocess import normalize_and_pad, resize_shape

# The paper's Table (COCO val2017, one V100, batch 1): FPS of each published variant.
PAPER_V100_FPS = {
    "fastinst_R50_ppm-fpn_x1_576": 53.8,
    "fastinst_R50_ppm-fpn_x3_640": 35.5,
    "fastinst_R101_ppm-fpn_x3_640": 28.0,
    "fastinst_R50-vd-dcn_ppm-fpn_x1_576": 47.8,
    "fastinst_R50-vd-dcn_ppm-fpn_x3_640": 32.5,
}
SHORT_NAMES = {official: alias for alias, official in ALIASES.items()}  # fastinst_R50_ppm-fpn_x1_576 -> fastinst-d1-r50
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("eager", "graphs", "compile", "compile+graphs")
MIN_START_S = {"eager": 10.0, "graphs": 10.0, "compile": 60.0, "compile+graphs": 10.0}  # time left a row needs
PHOTO = (480, 640)  # the photo whose test resize sets each variant's size
CALIBRATION_SIZE = (128, 192)
BRANCH_GAIN = 0.1  # output std of a calibrated residual branch's last BatchNorm
DRY_SIZE = (64, 96)
MARKDOWN, JSON_FILE = "gpu_benchmark.md", "gpu_benchmark.json"
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny input, 1 warmup + 1 iteration, fp32 + bf16")
    p.add_argument("--out", help="folder for the table and JSON (default benchmarks/results/gpu, dry run: a temp dir)")
    p.add_argument("--budget-s", type=float, default=420.0, help="time for all rows, seconds (default 420)")
    p.add_argument("--variants", help="comma list of variant names or aliases (default: the five published)")
    p.add_argument("--dtypes", help="comma list of fp32, bf16, fp16 (default all; dry run: fp32,bf16)")
    p.add_argument("--modes", help=f"comma list of {', '.join(MODES)} (default all)")
    p.add_argument("--iters", type=int, help="timed calls per measurement (default 50; dry run 1)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default 10; dry run 1)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image size (default: the test size)")
    p.add_argument("--score-threshold", type=float, default=0.3, help="pipeline score threshold (default 0.3)")
    p.add_argument("--weights", choices=("random", "official"), default="random", help="default random")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's; dry run 1)")
    args = p.parse_args(argv)
    try:  # "fastinst-d1-r50-vd-dcn" is taken for the registry's "fastinst-d1-r50vd-dcn"
        args.variants = [canonical_name(v.replace("r50-vd", "r50vd")) for v in _split(args.variants)]
    except ConfigError as e:
        p.error(f"--variants: {e}")
    args.variants = args.variants or list(PAPER_V100_FPS)
    args.dtypes = _split(args.dtypes) or (["fp32", "bf16"] if args.dry_run else list(DTYPES))
    args.modes = _split(args.modes) or list(MODES)
    for key, allowed in (("dtypes", DTYPES), ("modes", MODES)):
        bad = [v for v in getattr(args, key) if v not in allowed]
        if bad:
            p.error(f"--{key}: unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
    if args.iters is None:
        args.iters = 1 if args.dry_run else 50
    if args.warmup is None:
        args.warmup = 1 if args.dry_run else 10
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be at least 1 and --warmup at least 0")
    if args.dry_run and args.size is None:
        args.size = list(DRY_SIZE)
    if args.dry_run and not args.threads:
        args.threads = 1
    return args


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


# ---------------------------------------------------------------------------------------------------------------------
# Timing and time budget
# ---------------------------------------------------------------------------------------------------------------------


class RowTimeout(Exception):
    """The time budget ran out while a row was running."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[dict[str, bool]]:
    """Raise `RowTimeout` in the main thread once `seconds` have passed (SIGALRM; a no-op where there is none).

    Yields a dict whose "fired" says whether it did: torch.compile re-raises the exceptions of the code it traces
    as its own types, so the caller checks the flag rather than the exception's type."""
    state = {"fired": False}
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield state
        return

    def on_alarm(signum, frame):
        state["fired"] = True
        raise RowTimeout(f"stopped after {seconds:.0f} s in this row")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield state
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def time_calls(fn: Callable[[], Any], warmup: int, iters: int, sync: Callable[[], None]) -> tuple[dict[str, Any], Any]:
    """Milliseconds of `iters` calls of `fn` (each followed by `sync`) after `warmup` untimed ones; and the last
    call's result."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    result = None
    for _ in range(iters):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    median, p90, low = spread(times)
    return {"median_ms": median, "p90_ms": p90, "min_ms": low, "iters": len(times)}, result


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, 90th percentile (nearest rank), minimum) of timings."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)], ordered[0]


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------

Outputs = tuple[torch.Tensor, torch.Tensor]
Net = Callable[[torch.Tensor], Outputs]


def branch_ends(backbone: nn.Module) -> set[int]:
    """ids of the BatchNorms that end a bottleneck's residual branch (`conv3.norm` in the detectron2 ResNet, `bn3` in
    ResNet-vd): the ones a trained network keeps small."""
    ends = set()
    for block in backbone.modules():
        for owner, attr in ((getattr(block, "conv3", None), "norm"), (block, "bn3")):
            norm = getattr(owner, attr, None) if owner is not None else None
            if isinstance(norm, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                ends.add(id(norm))
    return ends


@torch.no_grad()
def calibrate_batchnorms(
    model: FastInst, size: tuple[int, int] = CALIBRATION_SIZE, branch_gain: float = BRANCH_GAIN, seed: int = 0
) -> int:
    """Random weights only: give every backbone BatchNorm its input's per-channel mean and variance on one random
    image, so its output has unit variance — `branch_gain` for the last one of each residual branch. Returns how many
    were set.

    A random ResNet's frozen BatchNorms are identities and its activations grow past fp16's range; normalising every
    BN keeps them at a trained network's scale (|x| < 10), and small residual branches (as trained networks have)
    keep the network from amplifying rounding errors chaotically: bf16 then changes the pixel decoder's features by
    ~2-5 % of their largest value, against 40-80 % with unit branches. Timings do not depend on any of this.
    """
    norms = [m for m in model.backbone.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))]
    ends = branch_ends(model.backbone)

    def set_statistics(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].double()
        gain = branch_gain if id(module) in ends else 1.0
        module.get_buffer("running_mean").copy_(x.mean((0, 2, 3)))
        module.get_buffer("running_var").copy_(x.var((0, 2, 3), unbiased=False) / gain**2)

    handles = [m.register_forward_pre_hook(set_statistics) for m in norms]
    try:
        g = torch.Generator().manual_seed(seed)
        image = torch.randint(0, 256, (1, 3, *size), generator=g, dtype=torch.uint8).to(model.pixel_mean.device)
        model.backbone((image.float() - model.pixel_mean) / model.pixel_std)
    finally:
        for h in handles:
            h.remove()
    return len(norms)


@dataclass
class Variant:
    """One published variant, prepared once: the folded fp32 model on the device and its reference input."""

    name: str
    model: FastInst  # folded, channels_last, fp32, on the device
    image: np.ndarray  # (h, w, 3) uint8, host memory
    padded: tuple[int, int]
    gflops: dict[str, float]
    params: int
    features32: list[torch.Tensor]  # the fp32 pixel decoder outputs on the reference input
    calibrated: int


@dataclass
class Entry:
    """A variant in one dtype: its model, eager outputs on the reference input and the dtype's feature error."""

    model: FastInst
    dtype: torch.dtype
    autocast: bool
    input: torch.Tensor  # the reference image normalised + padded, in `dtype`, channels_last
    eager: Outputs
    feature_error: float
    compiled: Net | None = None
    compile_error: str = ""


@dataclass
class State:
    args: argparse.Namespace
    device: torch.device
    t0: float
    variants: dict[str, Variant | Exception] = field(default_factory=dict)
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)  # per variant, for the report
    timed_out: bool = False  # a row was stopped by the budget (maybe inside torch.compile)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def sizes_of(cfg, size: list[int] | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """(image h, w; padded H, W) of a variant: the test resize of a 480x640 photo, or `--size`."""
    div = cfg.model.size_divisibility
    if size is None:
        return resize_shape(*PHOTO, cfg.input.min_size_test, cfg.input.max_size_test), default_size(cfg)
    h, w = size
    return (h, w), (-(-h // div) * div, -(-w // div) * div)


def prepare_variant(state: State, name: str) -> Variant:
    args = state.args
    with warnings.catch_warnings():  # "randomly initialised": intended here
        warnings.simplefilter("ignore")
        model = load_model(name, "official" if args.weights == "official" else None, "cpu")
    cfg = model.cfg
    image_size, padded = sizes_of(cfg, args.size)
    with torch.device("meta"):  # FLOPs need shapes only
        shape_model = build_model(cfg)
    flops = count_flops(shape_model, *image_size)
    params = sum(p.numel() for p in model.parameters())
    calibrated = calibrate_batchnorms(model) if args.weights == "random" else 0
    model = optimize_for_inference(model, channels_last=True, inplace=True).to(state.device)
    image = np.random.default_rng(0).integers(0, 256, (*image_size, 3), dtype=np.uint8)
    variant = Variant(name, model, image, padded, {k: v / 1e9 for k, v in flops.items()}, params, [], calibrated)
    with torch.inference_mode():
        variant.features32 = [f.float() for f in model.features(preprocess(variant, torch.float32, state.device))]
    return variant


def get_variant(state: State, name: str) -> Variant:
    if name not in state.variants:
        try:
            state.variants[name] = prepare_variant(state, name)
        except Exception as e:  # noqa: BLE001 - kept and re-raised for each of the variant's rows
            state.variants[name] = e
    variant = state.variants[name]
    if isinstance(variant, Exception):
        raise variant
    return variant


def preprocess(variant: Variant, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The variant's uint8 (h, w, 3) host image -> normalised zero-padded (1, 3, H, W) in `dtype`, channels_last, on
    `device` (the pipeline's first steps)."""
    x = torch.from_numpy(variant.image).to(device).permute(2, 0, 1)  # (3, h, w) uint8
    cfg = variant.model.cfg
    batch, _ = normalize_and_pad([x], cfg.model.pixel_mean, cfg.model.pixel_std, cfg.model.size_divisibility)
    if tuple(batch.shape[-2:]) != variant.padded:
        raise RuntimeError(f"padded input {tuple(batch.shape[-2:])} != expected {variant.padded}")
    return batch.to(dtype=dtype, memory_format=torch.channels_last)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float32."""
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def with_autocast(fn, enabled: bool, device: torch.device, dtype: torch.dtype):
    if not enabled:
        return fn

    def wrapped(*a):
        with torch.autocast(device.type, dtype=dtype, cache_enabled=False):  # no cached casts across graph capture
            return fn(*a)

    return wrapped


def get_entry(state: State, name: str, dtype_name: str) -> Entry:
    key = (name, dtype_name)
    if key in state.entries:
        return state.entries[key]
    variant = get_variant(state, name)
    dtype = DTYPES[dtype_name]
    model = variant.model if dtype == torch.float32 else copy.deepcopy(variant.model).to(dtype)
    x = preprocess(variant, dtype, state.device)
    net = InferenceNet(model)
    autocast = False
    with torch.inference_mode():
        try:
            eager = net(x)
        except RuntimeError as e:  # a dtype mix some op does not take: run the cast model under autocast too
            if dtype == torch.float32:
                raise
            print(f"  {name} {dtype_name}: {str(e).splitlines()[0][:120]}; retrying under autocast", flush=True)
            autocast = True
            eager = with_autocast(net, True, state.device, dtype)(x)
        error = 0.0  # fp32: the reference itself
        if dtype != torch.float32:
            feats = with_autocast(model.features, autocast, state.device, dtype)(x)
            error = max(relative_error(f, r) for f, r in zip(feats, variant.features32, strict=True))
    entry = Entry(model, dtype, autocast, x, (eager[0].clone(), eager[1].clone()), error)
    state.entries[key] = entry
    return entry


def capture_graph(fn: Net, example: torch.Tensor) -> Net:
    """`fn` captured in a CUDA graph on a static copy of `example`; calls copy their input in and replay."""
    static_input = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (cuDNN autotuning, lazy inits) outside the capture
        for _ in range(3):
            fn(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = fn(static_input)

    def replay(x: torch.Tensor) -> Outputs:
        static_input.copy_(x)
        graph.replay()
        return static_output

    return replay


def make_net(state: State, entry: Entry, mode: str) -> Net:
    eager: Net = with_autocast(InferenceNet(entry.model), entry.autocast, state.device, entry.dtype)
    if mode == "eager":
        return eager
    if mode == "graphs":
        return capture_graph(eager, entry.input)
    if entry.compiled is None:
        if entry.compile_error:
            raise RuntimeError(f"compile failed in the compile row ({entry.compile_error})")
        try:
            torch._dynamo.reset()  # a fresh cache per model: no recompile limit, no fallback to eager after 8 models
            compiled = torch.compile(InferenceNet(entry.model), dynamic=False)
            net = with_autocast(compiled, entry.autocast, state.device, entry.dtype)
            net(entry.input)  # compiles
            entry.compiled = net
        except Exception as e:
            entry.compile_error = one_line(e)
            raise
    return entry.compiled if mode == "compile" else capture_graph(entry.compiled, entry.input)


def make_pipeline(state: State, variant: Variant, entry: Entry, net: Net, threshold: float):
    h, w = variant.image.shape[:2]

    def pipeline() -> dict[str, np.ndarray]:
        x = preprocess(variant, entry.dtype, state.device)  # host uint8 -> device -> normalise + pad
        logits, masks = net(x)
        out = instances(logits[0], masks[0], variant.padded, (h, w), (h, w), k=100, score_threshold=threshold)
        return {k: v.cpu().numpy() for k, v in out.items()}

    return pipeline


# ---------------------------------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------------------------------


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    return f"{type(e).__name__}: {text}"[:200]


def measure(state: State, name: str, dtype_name: str, mode: str) -> dict[str, Any]:
    args = state.args
    setup = time.perf_counter()
    variant = get_variant(state, name)
    entry = get_entry(state, name, dtype_name)
    with torch.inference_mode():
        net = make_net(state, entry, mode)
        out = entry.eager if mode == "eager" else net(entry.input)  # eager: computed with the entry
        state.sync()
        setup_s = time.perf_counter() - setup
        finite = bool(torch.isfinite(out[0]).all() and torch.isfinite(out[1]).all())
        if mode == "eager":
            check = {"feature_error_vs_fp32": entry.feature_error}
        else:
            diff = max(relative_error(o, e) for o, e in zip(out, entry.eager, strict=True))
            check = {"output_diff_vs_eager": diff}
        network, _ = time_calls(lambda: net(entry.input), args.warmup, args.iters, state.sync)
        result: dict[str, Any] = {"network": network}
        for key, threshold in (("pipeline", args.score_threshold), ("pipeline_top100", 0.0)):
            pipeline = make_pipeline(state, variant, entry, net, threshold)
            stats, last = time_calls(pipeline, args.warmup, args.iters, state.sync)
            stats["fps"] = 1e3 / stats["median_ms"]
            stats["instances"] = len(last["scores"])
            stats["score_threshold"] = threshold
            result[key] = stats
    macs = sum(variant.gflops[k] for k in ("backbone", "pixel_decoder", "decoder"))
    network["fps"] = 1e3 / network["median_ms"]
    network["tflops_per_s"] = 2 * macs / network["median_ms"]  # 2 flops per multiply-add; GFLOP / ms = TFLOP/s
    return {**result, "check": {**check, "finite": finite}, "autocast": entry.autocast, "setup_s": setup_s}


def plan_rows(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(variant, dtype, mode) in the order they run: cheap modes for everything first, compile last."""
    rows = []
    for mode in ("eager", "graphs"):
        rows += [(v, d, mode) for v in args.variants for d in args.dtypes]
    low_first = sorted(args.dtypes, key=lambda d: d == "fp32")
    for d in low_first:
        for v in args.variants:
            rows += [(v, d, m) for m in ("compile", "compile+graphs")]
    return [r for r in rows if r[2] in args.modes]


def run_row(state: State, name: str, dtype_name: str, mode: str) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": SHORT_NAMES.get(name, name), "name": name, "dtype": dtype_name, "mode": mode}
    if mode != "eager" and state.device.type != "cuda":
        return {**row, "status": "skipped", "reason": "no CUDA"}
    left = state.args.budget_s - (time.perf_counter() - state.t0)
    if left < MIN_START_S[mode]:
        return {**row, "status": "skipped", "reason": "time budget"}
    alarm = {"fired": False}
    try:
        with deadline(left) as alarm:
            row.update(measure(state, name, dtype_name, mode))
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - one failed row must not stop the others; the reason goes in the table
        if alarm["fired"] or isinstance(e, RowTimeout):
            state.timed_out = True
            row.update(status="skipped", reason=f"time budget: stopped after {left:.0f} s in this row")
        else:
            row["status"], row["reason"] = "failed", one_line(e)
            row["traceback"] = traceback.format_exc(limit=6).splitlines()[-12:]
    finally:
        if state.device.type == "cuda":
            with contextlib.suppress(Exception):
                torch.cuda.synchronize(state.device)
    return row


def release(state: State, remaining: Counter, name: str, dtype_name: str) -> None:
    """Free a model once no planned row needs it."""
    remaining[(name, dtype_name)] -= 1
    remaining[name] -= 1
    if remaining[(name, dtype_name)] <= 0:
        state.entries.pop((name, dtype_name), None)
    if remaining[name] <= 0:
        state.variants.pop(name, None)
    if state.device.type == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where the rows ran (also benchmarks/gpu_train.py's table head)."""
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
    return info


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def cell_ms(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.1f}"


def check_cell(row: dict[str, Any]) -> str:
    check = row["check"]
    if not check["finite"]:
        return "NON-FINITE outputs"
    if "feature_error_vs_fp32" in check:
        return "fp32 reference" if row["dtype"] == "fp32" else f"features {check['feature_error_vs_fp32']:.2%} vs fp32"
    return f"outputs {check['output_diff_vs_eager']:.2%} vs eager"


def markdown(state: State, rows: list[dict[str, Any]], info: dict[str, Any], finished: bool) -> str:
    args = state.args
    lines = [
        "# FastInst GPU benchmark" + (" (dry run: CPU, tiny input, not a measurement)" if args.dry_run else ""),
        "",
        f"{info['device_name']} ({info['device']}) · torch {info['torch']}"
        + (f" · CUDA {info['cuda']} · cuDNN {info['cudnn']}" if "cuda" in info else "")
        + f" · {info['date']} · batch 1 · median of {args.iters} after {args.warmup} warm-up calls"
        + f" · weights: {args.weights}"
        + ("" if finished else " · **run in progress or interrupted**"),
        "",
        "| variant | dtype | mode | network ms | pipeline ms | pipeline FPS | top-100 pipeline ms | instances "
        "(thr / top-100) | check | paper V100 FPS |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    order = {key: i for i, key in enumerate(itertools.product(args.variants, DTYPES, MODES))}
    for row in sorted(rows, key=lambda r: order.get((r["name"], r["dtype"], r["mode"]), 0)):
        paper = PAPER_V100_FPS.get(row["name"])
        mode = row["mode"] + (" + autocast" if row.get("autocast") else "")
        head = f"| {row['variant']} | {row['dtype']} | {mode} |"
        tail = f" {paper if paper is not None else '—'} |"
        if row["status"] != "ok":
            reason = row["reason"].replace("|", "/")
            label = f"failed: {reason}" if row["status"] == "failed" else f"skipped ({reason})"
            lines.append(f"{head} {label} | — | — | — | — | — |{tail}")
            continue
        net, pipe, top = row["network"], row["pipeline"], row["pipeline_top100"]
        lines.append(
            f"{head} {cell_ms(net['median_ms'])} | {cell_ms(pipe['median_ms'])} | {pipe['fps']:.1f} | "
            f"{cell_ms(top['median_ms'])} | {pipe['instances']} / {top['instances']} | {check_cell(row)} |{tail}"
        )
    lines += [
        "",
        "| variant | image | network input | GFLOPs (network / + post-processing) | params M |",
        "|---|---|---|---:|---:|",
    ]
    for name, s in state.summaries.items():
        lines.append(
            f"| {SHORT_NAMES.get(name, name)} | {s['image'][0]}x{s['image'][1]} | {s['padded'][0]}x{s['padded'][1]} | "
            f"{s['gflops']['total'] - s['gflops']['postprocess']:.1f} / {s['gflops']['total']:.1f} | "
            f"{s['params'] / 1e6:.2f} |"
        )
    lines += ["", *notes(args), ""]
    return "\n".join(lines)


def notes(args: argparse.Namespace) -> list[str]:
    thr = args.score_threshold
    text = [
        "Network: normalised padded input on the device -> pred_logits, pred_masks. Pipeline: decoded uint8 image in "
        "host memory -> device -> normalise + pad -> network -> `fastinst.model.postprocess.instances` at the "
        f"image's size (score threshold {thr}) -> masks, scores, labels as numpy. Top-100 pipeline: threshold 0, the "
        "official top-100 instances. Times are wall clock with `torch.cuda.synchronize`, batch 1.",
        "",
        "Check: eager rows compare the pixel decoder's features with the fp32 model's (relative max error); other "
        "modes compare their outputs with eager in the same dtype (compile may flip near-tied query choices). fp32 "
        "uses torch's defaults (cuDNN convolutions may use TF32). Paper FPS: the FastInst paper, one V100, its own "
        "code; not measured here.",
    ]
    if args.weights == "random":
        text += [
            "",
            f"Weights are random: no class probability reaches {thr}, so the thresholded pipeline keeps no instance "
            "and its post-processing is the cheapest possible; the top-100 pipeline is the most expensive one "
            f"(trained weights keep a handful of instances at {thr}: between the two). The backbone's frozen "
            "BatchNorm statistics are set from one random image so activations stay at a trained network's scale.",
        ]
    return text


def remember_summary(state: State, name: str) -> None:
    variant = state.variants.get(name)
    if isinstance(variant, Variant) and name not in state.summaries:
        state.summaries[name] = {
            "image": list(variant.image.shape[:2]),
            "padded": list(variant.padded),
            "gflops": {k: round(v, 3) for k, v in variant.gflops.items()},
            "params": variant.params,
            "calibrated_batchnorms": variant.calibrated,
            "paper_v100_fps": PAPER_V100_FPS.get(name),
        }


def write(state: State, out: Path, rows: list[dict[str, Any]], info: dict[str, Any], finished: bool) -> None:
    args = state.args
    settings = {
        k: getattr(args, k)
        for k in ("dry_run", "budget_s", "variants", "dtypes", "modes", "iters", "warmup", "size", "score_threshold")
    }
    settings.update(weights=args.weights, elapsed_s=round(time.perf_counter() - state.t0, 1), finished=finished)
    data = {"machine": info, "settings": settings, "variants": state.summaries, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_FILE).write_text(json.dumps(data, indent=2) + "\n")
    (out / MARKDOWN).write_text(markdown(state, rows, info, finished))


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    else:
        print("no CUDA device here; run with --dry-run for the CPU check of this script", file=sys.stderr)
        return 2
    out = (
        Path(args.out)
        if args.out
        else (Path(tempfile.mkdtemp(prefix="fastinst-gpu-dry-")) if args.dry_run else REPO / "benchmarks/results/gpu")
    )
    state = State(args, device, t0)
    info = machine_info(state.device)
    plan = plan_rows(args)
    remaining: Counter = Counter()
    for name, dtype_name, mode in plan:
        if mode == "eager" or device.type == "cuda":
            remaining[(name, dtype_name)] += 1
            remaining[name] += 1
    print(f"{info['device_name']} · torch {info['torch']} · {len(plan)} rows · budget {args.budget_s:.0f} s · {out}")
    rows: list[dict[str, Any]] = []
    for name, dtype_name, mode in plan:
        row = run_row(state, name, dtype_name, mode)
        remember_summary(state, name)
        rows.append(row)
        elapsed = time.perf_counter() - t0
        if row["status"] == "ok":
            text = (
                f"network {row['network']['median_ms']:.2f} ms, pipeline {row['pipeline']['median_ms']:.2f} ms "
                f"({row['pipeline']['fps']:.1f} FPS), top-100 {row['pipeline_top100']['median_ms']:.2f} ms, "
                f"{check_cell(row)}, setup {row['setup_s']:.1f} s"
            )
        else:
            text = f"{row['status']}: {row['reason']}"
        print(f"[{elapsed:6.1f} s] {row['variant']} {dtype_name} {mode}: {text}", flush=True)
        if mode == "eager" or device.type == "cuda":
            release(state, remaining, name, dtype_name)
        write(state, out, rows, info, finished=False)
    write(state, out, rows, info, finished=True)
    print((out / MARKDOWN).read_text())
    print(f"wrote {out / MARKDOWN} and {out / JSON_FILE} in {time.perf_counter() - t0:.1f} s", flush=True)
    code = 0 if any(r["status"] == "ok" for r in rows) else 1
    if state.timed_out:  # a compile stopped midway may leave worker processes that would hold up a normal exit
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
