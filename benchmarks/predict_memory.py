#!/usr/bin/env python
"""Peak memory of `fastinst predict` over folders of images or over videos (bounded memory, no growth per image/frame).

    .venv/bin/python benchmarks/predict_memory.py [--sizes 100 2000] [--model fastinst-demo] [--threads 1]
    .venv/bin/python benchmarks/predict_memory.py --video-frames 20 200 [--video-size 1920 1080] [--threads 1]

Folder mode writes the images (64x80 PNGs) and a demo checkpoint to a temporary folder, runs the real CLI in a child
process per folder size with --save-json and overlays, and prints the child's peak RSS (ru_maxrss) for each and their
ratio.

Video mode writes one test video per length (moving coloured shapes, H.264 or MPEG-4 through PyAV, each frame drawn
when the encoder asks for it), runs `fastinst predict --model M --weights W VIDEO --device cpu` (default score
threshold 0.3, overlay MP4 written) in a child process per video and prints the same table, plus the child's resident
set after chosen frames (read from /proc after each overlay frame reaches the video writer). It then runs the
predictor in this process over the first --probe-frames frames with `select` and `_full_size` of
`fastinst.model.postprocess` wrapped, and prints how many full-size (video-sized) masks post-processing made and
returned per frame, at threshold 0.3 and, for contrast, at 0 (the official top-k, every pair's mask).

The weights are random (seed 0). In video mode the last layer of every class head and mask-embedding head is scaled
(--sharpen, default x16 and x8) so that 6-10 (query, class) pairs per frame pass 0.3 and the overlay, the writer
and the post-processing have real instances to carry; --sharpen 1 1 gives the plain random model, which keeps none.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = """
import resource, sys
from fastinst.cli import main
rss = []  # video mode, on Linux: the resident set (KiB) after each overlay frame is handed to the video writer
if CURVE:
    import fastinst.engine.writers as writers
    write = writers.VideoWriter.write
    def logged(self, frame):
        write(self, frame)
        with open("/proc/self/statm") as f:
            rss.append(int(f.read().split()[1]) * resource.getpagesize() // 1024)
    writers.VideoWriter.write = logged
rc = main(sys.argv[1:])
print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
print("RSS", *rss)
sys.exit(rc)
"""


def child_command(args: argparse.Namespace, cli_args: list[str], curve: bool) -> tuple[list[str], dict[str, str]]:
    """The child's command line (`fastinst` CLI + its peak RSS) and environment, with --threads applied."""
    env = dict(os.environ)
    prelude = f"CURVE = {curve and Path('/proc/self/statm').exists()}\n"
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        prelude += f"import torch\ntorch.set_num_threads({int(args.threads)})\n"
    return [sys.executable, "-c", prelude + CHILD, *cli_args], env


def run_child(args: argparse.Namespace, cli_args: list[str], curve: bool = False) -> tuple[float, float, str, list]:
    """Run the CLI in a child process -> (peak RSS MiB, seconds, its stdout, RSS MiB after each video frame)."""
    cmd, env = child_command(args, cli_args, curve)
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.time() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    lines = proc.stdout.splitlines()
    rss = int(next(line.split()[1] for line in lines if line.startswith("MAXRSS")))
    per_frame = [int(v) / 1024 for line in lines if line.startswith("RSS") for v in line.split()[1:]]
    return rss / 1024, seconds, proc.stdout, per_frame


def print_table(unit: str, rows: list[tuple[int, float, float]]) -> None:
    print(f"{unit:>8} {'peak RSS MiB':>14} {'seconds':>9}")
    for n, mib, sec in rows:
        print(f"{n:>8} {mib:>14.1f} {sec:>9.1f}")
    if len(rows) >= 2:
        print(f"peak RSS ratio {rows[-1][0]} vs {rows[0][0]} {unit}: {rows[-1][1] / rows[0][1]:.3f}")


# ---------------------------------------------------------------------------------------------------------------------
# Folder mode
# ---------------------------------------------------------------------------------------------------------------------


def folder_mode(args: argparse.Namespace, tmp: Path, ckpt: Path) -> list[tuple[int, float, float]]:
    rows = []
    rng = np.random.default_rng(0)
    for n in args.sizes:
        folder = tmp / f"images_{n}"
        folder.mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
        cli = ["predict", "--model", args.model, "--weights", str(ckpt), str(folder)]
        mib, sec, _, _ = run_child(args, [*cli, "--output", str(tmp / f"out_{n}"), "--save-json"])
        rows.append((n, mib, sec))
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Video mode
# ---------------------------------------------------------------------------------------------------------------------


def sharpen(state: dict, class_scale: float, mask_scale: float) -> None:
    """Scale (in place) the last Linear of every class head and mask-embedding head of a FastInst state dict."""
    for head, scale in (("class_embed_layers", class_scale), ("mask_embed_layers", mask_scale)):
        pattern = re.compile(rf"(^|\.){head}\.(\d+)\.layers\.(\d+)\.(weight|bias)$")
        found = [(k, m) for k in state if (m := pattern.search(k))]
        if not found:
            raise KeyError(f"no {head}.*.layers.* in the state dict")
        last = max(int(m.group(3)) for _, m in found)
        for k, m in found:
            if int(m.group(3)) == last:
                state[k].mul_(scale)


def shape_frames(count: int, width: int, height: int) -> Iterator[np.ndarray]:
    """`count` uint8 RGB frames, made one at a time: a red square, a green disc and a blue bar moving on grey."""
    background = np.empty((height, width, 3), np.uint8)
    background[:] = np.linspace(40, 110, height, dtype=np.float32).astype(np.uint8)[:, None, None]
    s = max(4, height // 4)
    step = max(1, width // 160)
    yy, xx = np.ogrid[:s, :s]
    disc = (yy - s / 2 + 0.5) ** 2 + (xx - s / 2 + 0.5) ** 2 <= (s / 2) ** 2
    for i in range(count):
        frame = background.copy()
        x = (step * 3 * i) % (width - s)
        frame[height // 8 : height // 8 + s, x : x + s] = (220, 40, 40)
        x, y = (width // 3 + step * 2 * i) % (width - s), (height // 3 + step * i) % (height - s)
        frame[y : y + s, x : x + s][disc] = (40, 200, 60)
        x = width - s - (step * 4 * i) % (width - s)
        frame[height - s : height - s // 2, max(0, x - s) : x + s] = (50, 60, 230)
        yield frame


def write_video(path: Path, frames: Iterator[np.ndarray], width: int, height: int, fps: int = 25) -> int:
    """Encode frames (drawn on demand) into an MP4 with PyAV: libx264 (ultrafast) when present, else mpeg4."""
    import av

    try:
        av.codec.Codec("libx264", "w")
        x264 = True
    except (av.FFmpegError, ValueError):
        x264 = False  # PyAV builds without GPL codecs: MPEG-4 part 2
    n = 0
    with av.open(str(path), mode="w", format="mp4") as container:
        if x264:
            stream = container.add_stream("libx264", rate=Fraction(fps), options={"preset": "ultrafast"})
        else:
            stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            n += 1
        for packet in stream.encode():
            container.mux(packet)
    return n


def probe_masks(args: argparse.Namespace, video: Path, ckpt: Path, threshold: float) -> list[dict]:
    """Post-processing of the first --probe-frames frames of `video`, watched through `fastinst.model.postprocess`'s
    `select` and `_full_size`. Per frame: `pairs` / `queries`, the (query, class) pairs whose class probability
    reaches `threshold` and their distinct queries; `upsampled`, the distinct masks `_full_size` made at the frame's
    size (float32; it may get them a few at a time, as views of one tensor); `widest`, the most float32 full-size masks
    one call held at once; `returned`, the bool masks in `Results.masks`; and their MiB."""
    import fastinst.model.postprocess as pp
    from fastinst import load_model
    from fastinst.engine.predictor import Predictor

    predictor = Predictor(load_model(args.model, ckpt, "cpu"))
    calls: list[dict] = []
    select, full_size = pp.select, pp._full_size

    def logged_select(pred_logits, k):
        scores, labels, queries = select(pred_logits, k)
        passing = scores >= threshold
        pairs, distinct = int(passing.sum()), int(queries[passing].unique().numel())
        calls.append({"pairs": pairs, "queries": distinct, "rows": set(), "widest": 0})
        return scores, labels, queries

    def logged_full_size(logits, *rest, **kw):
        out = full_size(logits, *rest, **kw)
        first, storage = logits.storage_offset() // max(1, logits.stride(0)), logits.untyped_storage().data_ptr()
        calls[-1]["rows"].update((storage, first + i) for i in range(logits.shape[0]))
        calls[-1]["widest"] = max(calls[-1]["widest"], out.shape[0])
        return out

    rows = []
    pp.select, pp._full_size = logged_select, logged_full_size
    try:
        for r in itertools.islice(predictor.predict_video(video, 1, threshold), args.probe_frames):
            (call,) = calls  # batch size 1: one post-processing call per frame
            calls.clear()
            h, w = r.masks.shape[1:]
            row = {k: call[k] for k in ("pairs", "queries", "widest")}
            row.update(upsampled=len(call["rows"]), returned=len(r), size=(h, w))
            row.update(widest_mib=call["widest"] * h * w * 4 / 2**20, returned_mib=r.masks.nbytes / 2**20)
            rows.append(row)
    finally:
        pp.select, pp._full_size = select, full_size
    return rows


def span(rows: list[dict], key: str) -> str:
    """'low-high' (or the one value) of `key` over `rows`."""
    low, high = min(r[key] for r in rows), max(r[key] for r in rows)
    return f"{low}" if low == high else f"{low}-{high}"


def video_mode(args: argparse.Namespace, tmp: Path, ckpt: Path) -> int:
    width, height = args.video_size
    rows = []
    for k, n in enumerate(args.video_frames):
        video = tmp / f"video{k}_{n}.mp4"
        t = time.time()
        written = write_video(video, shape_frames(n, width, height), width, height)
        print(f"wrote {video.name}: {written} frames {width}x{height} in {time.time() - t:.1f} s", flush=True)
        cli = ["predict", "--model", args.model, "--weights", str(ckpt), str(video), "--device", "cpu"]
        cli += ["--output", str(tmp / f"out_{n}")] + (["--save-json"] if args.save_json else [])
        mib, sec, stdout, per_frame = run_child(args, cli, curve=True)
        summary = next((line for line in stdout.splitlines() if line.startswith("predict:")), "")
        found = re.search(r"(\d+) video frames, (\d+) instances", summary)
        frames, instances = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
        if frames != n:
            print(f"!! the CLI read {frames} frames of {n}: {summary}")
            return 1
        print(f"  {summary}  ({instances / frames:.1f} instances per frame)", flush=True)
        marks = [m for m in (1, 10, 20, 50, 100, 150, 200, 500, 1000, 2000) if m < n] + [n]
        if len(per_frame) == n:
            print("  RSS MiB after frame " + ", ".join(f"{m}: {per_frame[m - 1]:.0f}" for m in marks), flush=True)
        rows.append((n, mib, sec))
        if k:  # the first (short) video stays for the probe below
            video.unlink()
    print()
    print_table("frames", rows)
    print()
    first = tmp / f"video0_{args.video_frames[0]}.mp4"
    print(f"post-processing over the first {args.probe_frames} frames of {first.name} ({width}x{height}):")
    head = ("threshold", "pairs>=thr", "queries", "upsampled", "float at once", "MiB", "returned", "MiB")
    print(" ".join(f"{h:>{max(9, len(h))}}" for h in head))
    for threshold in (0.3, 0.0):
        probe = probe_masks(args, first, ckpt, threshold)
        assert all(p["size"] == (height, width) for p in probe), "masks are not at the video's size"
        cells = [f"{threshold:g}", *(span(probe, k) for k in ("pairs", "queries", "upsampled", "widest"))]
        cells += [f"{max(p['widest_mib'] for p in probe):.1f}", span(probe, "returned")]
        cells += [f"{max(p['returned_mib'] for p in probe):.1f}"]
        print(" ".join(f"{c:>{max(9, len(h))}}" for c, h in zip(cells, head, strict=True)))
    print(
        "per frame: pairs>=thr / queries = (query, class) pairs whose class probability reaches the threshold / their "
        "queries;\nupsampled = distinct float32 masks made at the frame size; float at once = most of them held at "
        "once;\nreturned = bool masks in Results.masks (MiB: the most per frame)"
    )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[100, 2000], help="folder mode: images per folder")
    p.add_argument("--model", default="fastinst-demo")
    p.add_argument("--threads", type=int, default=0, help="torch/OpenMP threads in the child (default: torch's)")
    p.add_argument("--video-frames", nargs="+", type=int, help="video mode: frames per test video (e.g. 20 200)")
    p.add_argument("--video-size", nargs=2, type=int, default=[1920, 1080], metavar=("W", "H"))
    p.add_argument("--probe-frames", type=int, default=4, help="video mode: frames post-processed in this process")
    p.add_argument("--sharpen", nargs=2, type=float, default=[16.0, 8.0], metavar=("CLASS", "MASK"))
    p.add_argument("--save-json", action="store_true", help="video mode: also pass --save-json to the CLI")
    args = p.parse_args()
    import torch

    from fastinst import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt = tmp / "w.pth"
        torch.manual_seed(0)
        state = build_model(args.model).state_dict()
        if args.video_frames:
            sharpen(state, *args.sharpen)
        torch.save({"model": state}, ckpt)
        if args.video_frames:
            return video_mode(args, tmp, ckpt)
        print_table("images", folder_mode(args, tmp, ckpt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
