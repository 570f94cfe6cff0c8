"""`fastinst predict --model NAME --weights PATH SOURCE ...`: instance masks on images, folders, globs and videos.

Writes one overlay PNG per image (same stem) and one overlay MP4 per video into `--output`, and with `--save-json` a
COCO results file `predictions.json`. Every file appears under its final name only once complete (temporary name, then
rename). In a folder or glob run an unreadable file is reported (`skipped <file>: <reason>`) and counted; a bad file
named directly on the command line is an error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import FastInstError
from ._options import add_device, add_dtype

THRESHOLD_HELP = (
    "keep instances scoring at least this (default 0.3). FastInst always returns its 100 best "
    "(query, class) pairs and most of them score near zero, so some threshold is needed for readable "
    "overlays; use 0 with --save-json for COCO evaluation"
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment instances in images, folders, globs or videos",
        description="Segment instances in images, folders, globs and videos: overlay PNGs/MP4s and, "
        "with --save-json, COCO results in --output.",
    )
    p.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="image file, folder, glob pattern or video (mp4/avi/mov)"
    )
    p.add_argument(
        "--model", default="fastinst-d1-r50", help="variant name, alias or YAML config (default fastinst-d1-r50)"
    )
    p.add_argument(
        "--weights",
        help="checkpoint file, or 'official' to download the release weights "
        "(cached in $FASTINST_CACHE or ~/.cache/fastinst)",
    )
    p.add_argument("--output", default="runs/predict", help="output folder (default runs/predict)")
    p.add_argument("--score-threshold", type=float, default=0.3, help=THRESHOLD_HELP)
    p.add_argument("--max-dets", type=int, default=100, help="at most this many instances per image (default 100)")
    add_device(p)
    add_dtype(p, "auto", "precision (default auto); results are float32 either way")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument(
        "--classes",
        help="class names: a text file (one a line), a COCO json (its categories) or a "
        "comma-separated list (default: the 80 COCO classes)",
    )
    p.add_argument("--save-json", action="store_true", help="also write predictions.json (COCO results format)")
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="run the PyTorch model or an exported ONNX file (--onnx)",
    )
    p.add_argument("--onnx", help="ONNX file for --backend onnxruntime (from `fastinst export`)")


# ---------------------------------------------------------------------------------------------------------------------
# Building the predictor
# ---------------------------------------------------------------------------------------------------------------------


def build_predictor(args: argparse.Namespace):
    """The one loader (`fastinst.factory.load_model`) for PyTorch, or an exported ONNX file, in a `Predictor`."""
    from ..engine.predictor import Predictor

    if args.batch_size < 1 or args.max_dets < 1:
        raise FastInstError("--batch-size and --max-dets must be at least 1")
    if not 0.0 <= args.score_threshold <= 1.0:
        raise FastInstError(f"--score-threshold {args.score_threshold:g}: must be between 0 and 1")
    if args.backend == "torch":
        from ..factory import load_model

        if args.weights is None:
            raise FastInstError("pass --weights PATH (a checkpoint) or --weights official (download the release)")
        return Predictor(load_model(args.model, args.weights, args.device, args.classes), dtype=args.dtype)
    if not args.onnx:
        raise FastInstError("--backend onnxruntime needs --onnx FILE (made by `fastinst export`)")
    try:
        from ..export import OnnxModel
    except ImportError as e:
        raise FastInstError(f"the onnxruntime backend is unavailable ({e}); pip install 'fastinst[onnx]'") from None
    model = OnnxModel(args.onnx)  # files from `fastinst export` carry their config and class names
    if args.classes:
        from ..factory import parse_classes

        names, ids = parse_classes(args.classes)
        if names is not None and len(names) != model.num_classes:
            raise FastInstError(f"{len(names)} class names given, but {args.onnx} has {model.num_classes} classes")
        model.names, model.category_ids = list(names or model.names), list(ids or range(1, model.num_classes + 1))
    return Predictor(model, dtype=args.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------------------------------------


def collect_sources(sources: list[str]) -> list[tuple[Path, bool]]:
    """SOURCE arguments -> [(file, lenient)]: files found in folders/globs are lenient (skipped when unreadable)."""
    from ..data.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_images

    media = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    out: list[tuple[Path, bool]] = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            out.append((path, False))
        elif path.is_dir():
            found = list_images(path, kinds=media)
            if not found:
                raise FastInstError(f"{path}: folder holds no image or video files")
            out += [(p, True) for p in found]
        elif path.exists():
            raise FastInstError(f"{path}: not a regular file")
        else:
            found = list_images(source, kinds=media)  # a glob; raises for a path that does not exist
            if not found:
                raise FastInstError(f"{source}: the pattern matches no image or video file")
            out += [(p, True) for p in found]
    return out


def _unique(path: Path, used: set[Path]) -> Path:
    """`path`, or `stem_1`, `stem_2`... when an earlier input of this run already produced that name."""
    candidate, n = path, 0
    while candidate in used:
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    used.add(candidate)
    return candidate


def _image_ids(paths: list[Path]) -> dict[Path, int] | None:
    """COCO-style ids from numeric stems (000000397133.jpg -> 397133) when every image has a distinct one."""
    ids = {p: int(p.stem) for p in paths if p.stem.isdigit()}
    return ids if len(ids) == len(paths) and len(set(ids.values())) == len(ids) else None


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


class _Run:
    """State of one `fastinst predict` call: counters, output names, COCO entries."""

    def __init__(self, args: argparse.Namespace, predictor, out: Path, progress: bool):
        self.args, self.predictor, self.out = args, predictor, out
        self.used: set[Path] = set()
        self.entries: list[dict] = []
        self.images = self.frames = self.instances = self.skipped = 0
        self.next_id = 1
        self.progress = progress

    def skip(self, path: Path, reason: str, bar=None) -> None:
        line = f"skipped {path}: {reason}"
        if bar is not None:
            bar.write(line)
        else:
            print(line, flush=True)
        self.skipped += 1

    def images_batch(self, batch: list[tuple[np.ndarray, Path]], ids: dict[Path, int] | None) -> None:
        a = self.args
        images, paths = [im for im, _ in batch], [p for _, p in batch]
        results = self.predictor.predict_batch(images, paths, a.score_threshold, a.max_dets)
        for r, path in zip(results, paths, strict=True):
            r.save(_unique(self.out / f"{path.stem}.png", self.used))
            if a.save_json:
                image_id = ids[path] if ids else self._new_id()
                self.entries += r.to_coco(image_id)
            self.images += 1
            self.instances += len(r)

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def run_images(self, files: list[tuple[Path, bool]]) -> None:
        from tqdm import tqdm

        from ..data.images import read_image

        ids = _image_ids([p for p, _ in files]) if self.args.save_json else None
        if ids:
            self.next_id = max(ids.values()) + 1
        bar = tqdm(total=len(files), unit="img", desc="predict", disable=not self.progress)
        batch: list[tuple[np.ndarray, Path]] = []
        for path, lenient in files:
            try:
                batch.append((read_image(path), path))
            except FastInstError as e:
                if not lenient:
                    raise
                self.skip(path, str(e).removeprefix(f"{path}: "), bar)
            if len(batch) == self.args.batch_size:
                self.images_batch(batch, ids)
                batch = []
            bar.update(1)
        if batch:
            self.images_batch(batch, ids)
        bar.close()

    def run_video(self, path: Path, lenient: bool) -> None:
        import av
        from tqdm import tqdm

        from ..engine.predictor import video_rate
        from ..engine.writers import VideoWriter

        a = self.args
        try:
            fps = video_rate(path)
            with av.open(str(path)) as c:
                total = c.streams.video[0].frames or None
        except (av.FFmpegError, OSError, IndexError) as e:
            if not lenient:
                raise FastInstError(f"{path}: cannot open the video ({e})") from None
            return self.skip(path, f"cannot open the video ({e})")
        writer = VideoWriter(_unique(self.out / f"{path.stem}.mp4", self.used), fps)
        bar = tqdm(total=total, unit="frame", desc=path.name, disable=not self.progress)
        try:
            for n, r in enumerate(self.predictor.predict_video(path, a.batch_size, a.score_threshold, a.max_dets)):
                writer.write(r.plot())
                if a.save_json:
                    self.entries += [dict(e, frame=n) for e in r.to_coco(self._new_id())]
                self.frames += 1
                self.instances += len(r)
                bar.update(1)
        except FastInstError as e:
            writer.abort()
            bar.close()
            if not lenient:
                raise
            return self.skip(path, str(e).removeprefix(f"{path}: "))
        except BaseException:
            writer.abort()
            raise
        writer.close()
        bar.close()


def run(args: argparse.Namespace) -> int:
    from ..data.images import is_video
    from ..files import write_json

    files = collect_sources(args.sources)
    predictor = build_predictor(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    images = [(p, lenient) for p, lenient in files if not is_video(p)]
    videos = [(p, lenient) for p, lenient in files if is_video(p)]
    progress = any(lenient for _, lenient in files) or bool(videos)
    state = _Run(args, predictor, out, progress)
    if images:
        state.run_images(images)
    for path, lenient in videos:
        state.run_video(path, lenient)
    if args.save_json:
        write_json(out / "predictions.json", state.entries)
    parts = [f"{state.images} image{'s' * (state.images != 1)}"]
    if videos:
        parts.append(f"{state.frames} video frames")
    parts.append(f"{state.instances} instances (score >= {args.score_threshold:g})")
    if state.skipped:
        parts.append(f"{state.skipped} skipped")
    print(f"predict: {', '.join(parts)} -> {out}")
    return 0 if state.images or state.frames else 1
