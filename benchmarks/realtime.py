"""Real-time goals of the D1-R50 user path as ratios to compute floors timed in the same run (issue #16).

    .venv/bin/python benchmarks/realtime.py [--threads 2] [--iters 5] [--backends torch,openvino,onnxruntime]
        [--json benchmarks/results/realtime.json]

The user path is `fastinst.load(...).predict(photo)`: a decoded RGB photo (default 1080x810, the parity fixture's
photo upscaled) -> the official test resize -> normalise + pad -> network -> instances scoring >= 0.3 with boolean
masks at the photo's size, as numpy (`Predictor.predict_batch`). Weights: the D1-R50 parity fixture's synthetic
weights (spread class scores, so that instances pass 0.3 as with trained weights), or `--weights FILE`.

Printed, every time from this run only:
* the fp32 and bf16 matmul rates (2048^2, before and after the models; the higher of the two) and the floors
  2 x MACs / rate of the network at the resized size;
* per backend and precision (the default "auto" and each of fp32 / bf16; onnxruntime in fp32 only): user path ms,
  network ms, instances kept, the user path and the network as fractions of the fp32 and bf16 floors, the
  instances matched to fp32 PyTorch's (same class, mask IoU >= 0.9), and the stages timed inside the user path
  (`stages_ms`: resize, normalise + pad, network, post-processing, each right after the one before: the
  post-processing share of the goal; "pre+post" is the user path minus the network timed on its own);
* "official order": the unfused fp32 network and the official post-processing (all 100 top-k masks upsampled to the
  padded and then the full size) in the same process: our network code standing in for the official one, whose
  FrozenBN is slower still (issue #16 measured the official code itself on an AMX machine);
* a 1920x1080 frame: user path and post-processing with 8 instances kept, and the post-processing share;
* the top ops of the default user path (torch.profiler, self CPU time) and their share.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "parity" / "data" / "fastinst_R50_ppm-fpn_x1_576-s0"


def median_ms(fn, iters: int, warmup: int = 1) -> float:
    """Median milliseconds of `fn` on the CPU (`fastinst benchmark`'s timer)."""
    from fastinst.commands.benchmark import time_fn

    return time_fn(fn, iters, warmup, lambda: None)["median_ms"]


def matmul_gflops(dtype: torch.dtype) -> float:
    """The 2048^2 CPU matmul rate in `dtype` (`fastinst benchmark`'s peak)."""
    from fastinst.commands.benchmark import matmul_peak

    return matmul_peak(torch.device("cpu"), dtype, lambda: None, n=2048, iters=8)["gflops_per_s"]


def cpu_flags() -> tuple[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor(), ""
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = [f for f in info.get("Flags", "").split() if f.startswith(("avx512", "amx", "avx2"))]
    model = info.get("Model name", "").strip()
    return f"{model} (family {info.get('CPU family', '?').strip()} model {info.get('Model', '?').strip()})", " ".join(
        sorted(flags)
    )


def build(weights: str | None):
    import fastinst

    sys.path.insert(0, str(ROOT / "tests"))
    if weights:
        return fastinst.load_model("fastinst-d1-r50", weights, "cpu")
    from parity.fixture import fixture_model, open_fixture

    return fixture_model(open_fixture(FIXTURE))


def photo_of(size: tuple[int, int]) -> np.ndarray:
    with np.load(FIXTURE / "reference.npz") as npz:
        base = npz["input.0.original"]
    return np.asarray(Image.fromarray(base).resize((size[1], size[0]), Image.Resampling.BILINEAR))


INT8_CALIBRATION = 30  # synthetic scenes (+ the photo) an INT8 IR is calibrated on here


def runtime(model, backend: str, dtype: str, photo: np.ndarray):
    """The model on `backend`: the PyTorch module itself, or its export run by onnxruntime / OpenVINO ("int8": an
    INT8 IR, float layers in the auto precision)."""
    if backend == "torch":
        return model
    import tempfile

    from fastinst.export import export_onnx
    from fastinst.runtimes import OnnxModel, OpenVinoModel

    folder = Path(tempfile.mkdtemp(prefix="fastinst-realtime-"))
    if dtype == "int8":  # an INT8 IR of free size (as `fastinst export --int8`), calibrated on synthetic scenes
        from fastinst.data.synthetic import render_sample
        from fastinst.export import export_openvino

        scenes = [render_sample(i, "train", i, 640)[0] for i in range(INT8_CALIBRATION)]
        xml = export_openvino(model, folder / "int8.xml", dynamic=True, calibration=[*scenes, photo])
        return OpenVinoModel(xml, dtype="auto")
    path = export_onnx(model, folder / "model.onnx", dynamic=True)
    if backend == "onnxruntime":
        return OnnxModel(path, threads=torch.get_num_threads())
    return OpenVinoModel(path, dtype=dtype)


def matched(reference, found) -> float:
    """The share of `reference`'s instances with one of the same class in `found` at mask IoU >= 0.9."""
    from fastinst.engine.results import found_again

    return found_again(reference, found) / max(len(reference), 1)


def network_ms(predictor, photo: np.ndarray, iters: int) -> float:
    """The network alone (normalised padded batch of the resized photo -> logits, masks) in the predictor's
    precision, on its backend."""
    from fastinst.model.preprocess import to_model_input

    model = predictor.model
    item = to_model_input(photo, model.cfg.input.min_size_test, model.cfg.input.max_size_test)
    if not isinstance(model, torch.nn.Module):  # an exported runtime
        images, _ = model.preprocess([item])
        return median_ms(lambda: model.forward_raw(images), iters)
    with torch.inference_mode():
        images, _ = model.preprocess([item])

        def run():
            with torch.inference_mode(), predictor._autocast():
                model.sem_seg_head.predictor(model.features(images))

        return median_ms(run, iters)


def stages_ms(predictor, photo: np.ndarray, iters: int) -> dict[str, float]:
    """The user path's stages timed inside it (`predict_batch`, `iters` calls, medians): the test resize,
    normalise + pad, post-processing (`instances` for every kept instance), and the network: the rest of the call.
    Unlike `network_ms` (the network on its own), this counts what each stage costs right after the one before."""
    import time

    import fastinst.model.fastinst as torch_model
    import fastinst.runtimes as runtimes

    spans = {  # stage -> the functions that make it, on the PyTorch model and on an exported runtime
        "resize": [(torch_model, "to_model_input"), (runtimes, "to_model_input")],
        "pad": [(torch_model.FastInst, "preprocess"), (runtimes.ExportedModel, "preprocess")],
        "post": [(torch_model.FastInst, "postprocess"), (runtimes, "instances")],
    }
    spent = dict.fromkeys(spans, 0.0)

    def timed(fn, stage):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[stage] += time.perf_counter() - start

        return run

    originals = [(owner, name, getattr(owner, name)) for parts in spans.values() for owner, name in parts]
    for stage, parts in spans.items():
        for owner, name in parts:
            setattr(owner, name, timed(getattr(owner, name), stage))
    rows = []
    try:
        predictor.predict_batch([photo])
        for _ in range(iters):
            spent.update(dict.fromkeys(spans, 0.0))
            start = time.perf_counter()
            predictor.predict_batch([photo])
            user = time.perf_counter() - start
            rows.append({**spent, "network": user - sum(spent.values()), "user": user})
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    return {k: 1e3 * float(np.median([r[k] for r in rows])) for k in rows[0]}


def compiled_network(model, photo: np.ndarray, iters: int) -> dict:
    """The default predictor's network under torch.compile (inductor, weights frozen as constants): the seconds the
    first call takes (compiling) and the median ms after."""
    import time

    import torch._inductor.config as inductor

    from fastinst.engine.predictor import Predictor
    from fastinst.model.preprocess import to_model_input

    inductor.freezing = True
    predictor = Predictor(model, dtype="auto")
    net = predictor.model
    item = to_model_input(photo, net.cfg.input.min_size_test, net.cfg.input.max_size_test)
    with torch.inference_mode():
        images, _ = net.preprocess([item])
    fn = torch.compile(lambda x: net.sem_seg_head.predictor(net.features(x)))

    def run():
        with torch.inference_mode(), predictor._autocast():
            fn(images)

    start = time.perf_counter()
    run()
    compile_s = time.perf_counter() - start
    return {"dtype": predictor.dtype, "compile_s": compile_s, "network_ms": median_ms(run, iters)}


def top_ops(predictor, photo: np.ndarray, count: int = 8) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    predictor.predict_batch([photo])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        predictor.predict_batch([photo])
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {"op": e.key, "ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total, "calls": e.count}
        for e in events[:count]
    ]


def main() -> int:
    from fastinst.engine.predictor import Predictor
    from fastinst.flops import count_flops
    from fastinst.model.fuse import inference_dtype
    from fastinst.model.postprocess import instances, instances_reference
    from fastinst.model.preprocess import resize_shape, to_model_input

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", help="a D1-R50 checkpoint (default: the parity fixture's synthetic weights)")
    ap.add_argument("--photo", type=int, nargs=2, default=(1080, 810), metavar=("H", "W"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--dtypes", default="auto,fp32,bf16,int8", help="precisions to time (comma-separated)")
    ap.add_argument("--compile", action="store_true", help="also time the network under torch.compile (inductor)")
    ap.add_argument("--backends", default="torch,openvino,onnxruntime", help="backends to time (comma-separated)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.weights).eval()
    cfg = model.cfg
    photo = photo_of(tuple(args.photo))
    h, w = resize_shape(*photo.shape[:2], cfg.input.min_size_test, cfg.input.max_size_test)
    with torch.no_grad():
        flops = count_flops(model, h, w)
    macs = flops["backbone"] + flops["pixel_decoder"] + flops["decoder"]
    rates = {"fp32": [matmul_gflops(torch.float32)], "bf16": [matmul_gflops(torch.bfloat16)]}
    cpu, flags = cpu_flags()
    print(f"CPU: {cpu}\nflags: {flags}\ntorch {torch.__version__}, {args.threads} threads, photo {photo.shape[:2]}")
    print(f"network at {h}x{w}: {macs / 1e9:.2f} GMAC")

    rows = []
    reference = Predictor(model, dtype="fp32").predict_batch([photo])[0]
    for backend in dict.fromkeys(args.backends.split(",")):
        for name in dict.fromkeys(args.dtypes.split(",")):
            if backend == "onnxruntime" and name != "fp32":
                continue  # onnxruntime runs the exported fp32 graph
            if name == "int8" and backend != "openvino":
                continue  # INT8 is an OpenVINO IR (fastinst export --int8)
            exported = runtime(model, backend, name, photo)
            predictor = Predictor(exported, dtype="auto" if name == "int8" else name)
            user = median_ms(lambda p=predictor: p.predict_batch([photo]), args.iters)
            found = predictor.predict_batch([photo])[0]
            net = network_ms(predictor, photo, args.iters)
            inside = stages_ms(predictor, photo, args.iters)
            rows.append(
                {
                    "backend": backend,
                    "dtype": name,
                    "runs_as": predictor.dtype,
                    "user_ms": user,
                    "network_ms": net,
                    "stages_ms": inside,
                    "kept": len(found),
                    "matched": matched(reference, found),
                }
            )

    compiled = compiled_network(model, photo, args.iters) if args.compile else None

    # the official order: unfused fp32 network, all 100 top-k masks upsampled to the padded and then the full size
    def official():
        with torch.inference_mode():
            item = to_model_input(photo, cfg.input.min_size_test, cfg.input.max_size_test)
            images, sizes = model.preprocess([item])
            out = model.sem_seg_head.predictor(model.features(images))
            found = instances_reference(
                out["pred_logits"][0], out["pred_masks"][0], tuple(images.shape[-2:]), sizes[0], photo.shape[:2]
            )
            keep = found["scores"] >= 0.3
            return found["masks"][keep].numpy(), found["scores"][keep].numpy()

    official_ms = median_ms(official, max(2, args.iters // 2))

    # a 1080p frame: the default user path, and post-processing with 8 instances kept
    frame = photo_of((1080, 1920))
    default = Predictor(model, dtype="auto")
    frame_user = median_ms(lambda: default.predict_batch([frame]), args.iters)
    with torch.inference_mode(), default._autocast():
        item = to_model_input(frame, cfg.input.min_size_test, cfg.input.max_size_test)
        images, sizes = default.model.preprocess([item])
        out = default.model.sem_seg_head.predictor(default.model.features(images))
    logits, masks = out["pred_logits"][0], out["pred_masks"][0]
    padded = tuple(images.shape[-2:])

    def post8():
        with torch.inference_mode():
            found = instances(logits, masks, padded, sizes[0], frame.shape[:2], k=8)
            return found["masks"].numpy()

    frame_post = median_ms(post8, args.iters)
    ops = top_ops(default, photo)
    rates["fp32"].append(matmul_gflops(torch.float32))
    rates["bf16"].append(matmul_gflops(torch.bfloat16))
    rate = {k: max(v) for k, v in rates.items()}
    floor = {k: 2 * macs / (r * 1e9) * 1e3 for k, r in rate.items()}

    print(f"matmul GFLOP/s: fp32 {rate['fp32']:.0f}, bf16 {rate['bf16']:.0f} (before/after: {rates})")
    print(f"floors: fp32 {floor['fp32']:.0f} ms, bf16 {floor['bf16']:.0f} ms")
    print()
    print(
        "| backend | dtype | runs as | user path ms | network ms | pre+post ms (share) | kept | matched fp32 "
        "| user / fp32 floor | network / fp32 floor | network / bf16 floor | vs official order "
        "| inside the user path: resize / pad / network / post ms (post share) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        st = r["stages_ms"]
        r["of_fp32_floor"] = floor["fp32"] / r["user_ms"]
        r["of_bf16_floor"] = floor["bf16"] / r["user_ms"]
        r["network_of_fp32_floor"] = floor["fp32"] / r["network_ms"]
        r["network_of_bf16_floor"] = floor["bf16"] / r["network_ms"]
        r["vs_official_order"] = official_ms / r["user_ms"]
        print(
            f"| {r['backend']} | {r['dtype']} | {r['runs_as']} | {r['user_ms']:.0f} | {r['network_ms']:.0f} "
            f"| {r['user_ms'] - r['network_ms']:.0f} ({1 - r['network_ms'] / r['user_ms']:.0%}) | {r['kept']} "
            f"| {r['matched']:.0%} | {r['of_fp32_floor']:.0%} | {r['network_of_fp32_floor']:.0%} "
            f"| {r['network_of_bf16_floor']:.0%} | {r['vs_official_order']:.2f}x "
            f"| {st['resize']:.1f} / {st['pad']:.1f} / {st['network']:.0f} / {st['post']:.1f} "
            f"({st['post'] / st['user']:.0%} of {st['user']:.0f}) |"
        )
    auto = rows[0]
    print(
        f"| official order (fp32, unfused, 100 masks) | fp32 | fp32 | {official_ms:.0f} | | | | | "
        f"{floor['fp32'] / official_ms:.0%} | | | 1.00x |"
    )
    if compiled is not None:
        print(
            f"\ntorch.compile (inductor, freezing) network, {compiled['dtype']}: {compiled['network_ms']:.0f} ms "
            f"({floor[compiled['dtype'] if compiled['dtype'] in floor else 'fp32'] / compiled['network_ms']:.0%} of "
            f"its floor) after {compiled['compile_s']:.0f} s compiling"
        )
    print(f"\n{auto['dtype']} path vs the official order: {official_ms / auto['user_ms']:.2f}x faster")
    print(
        f"1920x1080 frame ({auto['runs_as']}): user path {frame_user:.0f} ms; post-processing with 8 instances "
        f"{frame_post:.0f} ms = {frame_post / frame_user:.1%} of the frame"
    )
    print("\ntop ops of the default user path (self CPU time):")
    for op in ops:
        print(f"  {op['op']:<55} {op['ms']:8.1f} ms {op['share']:6.1%}  ({op['calls']} calls)")
    result = {
        "cpu": cpu,
        "flags": flags,
        "torch": torch.__version__,
        "threads": args.threads,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "photo": list(photo.shape[:2]),
        "resized": [h, w],
        "gmac": macs / 1e9,
        "matmul_gflops": rates,
        "floor_ms": floor,
        "rows": rows,
        "official_order_ms": official_ms,
        "speedup_vs_official_order": official_ms / auto["user_ms"],
        "frame_1080p": {"user_ms": frame_user, "post_8_ms": frame_post, "post_share": frame_post / frame_user},
        "top_ops": ops,
        "compiled_network": compiled,
        "auto_resolves_to": inference_dtype("auto", "cpu"),
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
