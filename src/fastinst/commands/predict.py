"""`fastinst predict --model NAME --weights PATH SOURCE ...`: instance masks on images, folders, globs, videos, cameras
and network streams.

Writes one overlay PNG per image (same stem) and one overlay MP4 per video, camera or stream into `--output`, and with
`--save-json` a COCO results file `predictions.json` whose entries carry `file_name` (the path as predicted; for a
video or stream frame also `frame`) and `category_name`, beside `predictions.run.json` (what ran: model, device,
backend, precision; the classes the ids stand for). The first line printed says what runs, e.g.
`predict: fastinst-d1-r50 · cpu · torch · bf16 (auto: AMX)`. Every file appears under its final name only once
complete (temporary name, then rename), and no overlay is ever written onto an input, even when `--output` is the
inputs' folder. In a folder or glob run an unreadable file is reported (`skipped <file>: <reason>`) and counted; a bad
file named directly on the command line is an error.

Image ids: with `--data DATA` (or `--classes` naming a COCO json that lists images) each image takes the dataset's id,
matched by file name (`fastinst.engine.evaluator.ImageIndex`); other images and video frames get fresh ids above the
dataset's largest. Without one, numeric stems are the ids (000000397133.jpg -> 397133), else 1, 2, 3... in order.
Classes: the model's classes take the ids of the dataset's (or a COCO `--classes` json's) categories of the same name
(`fastinst.classes`); classes the dataset lacks are drawn but left out of the JSON.

Live sources (`parse_source`): a camera index (`0`, or `--webcam [N]`), a camera device (`/dev/video0`) or a stream
URL (rtsp, rtmp, http(s), udp, tcp) is read with PyAV frame by frame as frames arrive; `--max-frames`, Ctrl-C,
SIGTERM or the end of the stream finish the overlay video (complete, under its final name) and the JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.sources import FrameFeed, LiveSource, StopSignals, camera_source, collect_sources
from ..errors import FastInstError
from ._options import add_backend, add_device, add_dtype, positive_int, probability

THRESHOLD_HELP = (
    "keep instances scoring at least this (default 0.3; --confidence-threshold is the official demo's name for it). "
    "FastInst always returns its 100 best (query, class) pairs and most of them score near zero, so some threshold "
    "is needed for readable overlays; use 0 with --save-json for COCO evaluation"
)


def _camera_index(value: str) -> int:
    """argparse type of `--webcam`: a camera index >= 0."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"camera index must be a whole number >= 0, got {value!r}")
    return int(value)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment instances in images, folders, globs, videos, cameras or streams",
        description="Segment instances in images, folders, globs, videos, cameras and network streams: overlay "
        "PNGs/MP4s and, with --save-json, COCO results in --output.",
    )
    p.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="image file, folder, glob pattern, video (mp4/avi/mov/ts...), camera index (0), camera device "
        "(/dev/video0) or stream URL (rtsp://, rtmp://, http(s)://, udp://, tcp://)",
    )
    p.add_argument(
        "--webcam",
        nargs="?",
        const=0,
        type=_camera_index,
        metavar="N",
        help="read camera N (default 0), the same as SOURCE N; stop with Ctrl-C or --max-frames",
    )
    p.add_argument(
        "--max-frames",
        type=positive_int,
        metavar="N",
        help="stop each video, camera or stream after N frames (a live source otherwise runs until Ctrl-C, "
        "SIGTERM or its end)",
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
    p.add_argument("--score-threshold", "--confidence-threshold", type=probability, default=0.3, help=THRESHOLD_HELP)
    p.add_argument(
        "--max-dets", type=positive_int, default=100, help="at most this many instances per image (default 100)"
    )
    add_device(p)
    add_dtype(p, "auto", "precision (default auto); results are float32 either way")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass (default 1)")
    p.add_argument(
        "--classes",
        help="class names: a text file (one a line), a COCO json (its categories; its images give --save-json "
        "their ids, as --data does) or a comma-separated list (default: the 80 COCO classes)",
    )
    p.add_argument(
        "--data",
        help="dataset the images belong to (folder, COCO json, Ultralytics YAML or short name, as in `fastinst "
        "eval`): --save-json entries take its image ids, matched by file name, and (without --classes) its classes, "
        "so `fastinst eval --results` scores each prediction against its own image",
    )
    p.add_argument("--split", default="val", help="split of --data (default val)")
    p.add_argument("--save-json", action="store_true", help="also write predictions.json (COCO results format)")
    add_backend(p, "the --model/--weights")


# ---------------------------------------------------------------------------------------------------------------------
# Building the predictor
# ---------------------------------------------------------------------------------------------------------------------


def build_predictor(args: argparse.Namespace, dataset: Any = None):
    """The one loader (`fastinst.factory.load_model`) for PyTorch, or an exported ONNX file, in a `Predictor`.

    With `dataset` (from `--data`) and no `--classes` the model's classes map to the dataset's category ids exactly
    as `fastinst eval --model` maps them (`fastinst.classes`: by name when both sides have names)."""
    from ..engine.predictor import Predictor
    from ..factory import load_backend

    if args.backend == "torch" and args.weights is None and not args.onnx:
        raise FastInstError("pass --weights PATH (a checkpoint) or --weights official (download the release)")
    # an --onnx file alone picks its runtime by suffix (.onnx: onnxruntime, .xml: OpenVINO)
    model = load_backend(args.backend, args.model, args.weights, args.device, args.classes, args.dtype, args.onnx)
    if dataset is not None and not args.classes:
        from ..classes import match_model
        from ..errors import note

        match = match_model(model, dataset, source=args.weights or args.onnx)
        for line in match.notes(dataset.name):
            note(line)
        name_of = dict(zip(dataset.category_ids, dataset.names, strict=True))
        model.names = [name_of[c] if c is not None else n for n, c in zip(model.names, match.ids, strict=True)]
        model.category_ids = match.ids
    return Predictor(model, dtype=args.dtype)


def run_record(predictor) -> dict:
    """The side file of predictions.json (`predictions.run.json`): what ran (`Predictor.run_info`), the fastinst
    version, and the classes the entries' category ids stand for ({id, name}), which `fastinst eval --results` uses
    to match them to the ground truth's by name and to score only the classes the model knows."""
    from .. import __version__

    classes = [
        {"id": int(c), "name": str(n)}
        for n, c in zip(predictor.names, predictor.category_ids, strict=True)
        if c is not None
    ]
    return {"run": dict(predictor.run_info, fastinst=__version__), "classes": classes}


def _identity(args: argparse.Namespace) -> tuple[Any, Any]:
    """-> (the `--data` dataset or None, an `ImageIndex` of the images whose ids predictions take, or None)."""
    from ..engine.evaluator import ImageIndex

    if args.data:
        from ..data.datasets import load_dataset

        ds = load_dataset(args.data, split=args.split)
        return ds, ImageIndex(ds.coco["images"], ds.image_root)
    spec = Path(args.classes) if args.classes else None
    if spec is None or spec.suffix.lower() != ".json" or not spec.is_file():
        return None, None
    from ..data.datasets import read_json

    data = read_json(spec)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images:
        return None, None  # a categories-only json names classes and nothing else
    if not all(isinstance(im, dict) and isinstance(im.get("id"), int) and "file_name" in im for im in images):
        raise FastInstError(f"{spec}: its 'images' need integer 'id' and 'file_name' to give predictions their ids")
    return None, ImageIndex(images)


# ---------------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------------


def _image_ids(paths: list[Path]) -> dict[Path, int] | None:
    """COCO-style ids from numeric stems (000000397133.jpg -> 397133) when every image has a distinct one."""
    ids = {p: int(p.stem) for p in paths if p.stem.isdigit()}
    return ids if len(ids) == len(paths) and len(set(ids.values())) == len(ids) else None


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


class _Run:
    """State of one `fastinst predict` call: counters, output names, COCO entries, image ids."""

    def __init__(self, args: argparse.Namespace, predictor, out: Path, progress: bool, index: Any, inputs: list[Path]):
        self.args, self.predictor, self.out = args, predictor, out
        self.used: set[Path] = {p.resolve() for p in inputs}  # overlays never take an input's path
        self.entries: list[dict] = []
        self.images = self.frames = self.instances = self.skipped = 0
        self.index = index  # ImageIndex of --data / a COCO --classes json, or None
        self.next_id = index.max_id + 1 if index is not None else 1
        self.unmatched: list[Path] = []
        self.taken: dict[int, Path] = {}  # dataset image id -> the file that took it
        self.progress = progress

    def output(self, name: str) -> Path:
        """`out/name`, or `stem_1`, `stem_2`... when an input or an earlier output of this run has that path."""
        path = self.out / name
        candidate, n = path, 0
        while candidate.resolve() in self.used:
            n += 1
            candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        self.used.add(candidate.resolve())
        return candidate

    def skip(self, path: Path, reason: str, bar=None) -> None:
        line = f"skipped {path}: {reason}"
        if bar is not None:
            bar.write(line)
        else:
            print(line, flush=True)
        self.skipped += 1

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def image_id(self, path: Path, stems: dict[Path, int] | None) -> int:
        if self.index is None:
            return stems[path] if stems else self._new_id()
        found = self.index.find(str(path))
        if found is not None and self.taken.setdefault(found, path) == path:
            return found
        self.unmatched.append(path)  # not in the dataset, or its image was already taken by another file
        return self._new_id()

    def images_batch(self, batch: list[tuple[np.ndarray, Path]], stems: dict[Path, int] | None) -> None:
        a = self.args
        images, paths = [im for im, _ in batch], [p for _, p in batch]
        results = self.predictor.predict_batch(images, paths, a.score_threshold, a.max_dets)
        for r, path in zip(results, paths, strict=True):
            r.save(self.output(f"{path.stem}.png"))
            if a.save_json:
                self.entries += r.to_coco(self.image_id(path, stems))
            self.images += 1
            self.instances += len(r)

    def run_images(self, files: list[tuple[Path, bool]]) -> None:
        from tqdm import tqdm

        from ..data.images import read_image

        stems = _image_ids([p for p, _ in files]) if self.args.save_json and self.index is None else None
        if stems:
            self.next_id = max(stems.values()) + 1
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
                self.images_batch(batch, stems)
                batch = []
            bar.update(1)
        if batch:
            self.images_batch(batch, stems)
        bar.close()

    def run_video(self, path: Path, lenient: bool) -> None:
        from ..engine.predictor import VideoReader

        try:
            reader = VideoReader(path)
        except FastInstError as e:
            if not lenient:
                raise
            return self.skip(path, str(e).removeprefix(f"{path}: "))
        try:
            self.frames_of(reader, str(path), f"{path.stem}.mp4", live=False)
        except FastInstError as e:
            if not lenient:
                raise
            self.skip(path, str(e).removeprefix(f"{path}: "))

    def run_live(self, source: LiveSource) -> None:
        from ..engine.predictor import VideoReader

        reader = VideoReader(
            source.url, format=source.format, options=source.options, timeout=source.timeout, name=source.name
        )
        self.frames_of(reader, source.name, f"{source.stem}.mp4", live=True)

    def frames_of(self, reader, name: str, overlay: str, live: bool) -> None:
        """Predict the frames of an opened `VideoReader` (up to --max-frames) into an overlay video, each batch going
        through the model as soon as it is read. For a file, a decoding error or an interrupt discards the overlay.
        A live source ends at its end, on Ctrl-C / SIGTERM, or on a read error after some frames; its overlay (and
        JSON entries) then hold every frame read, and the overlay is complete under its final name."""
        from tqdm import tqdm

        from ..engine.writers import VideoWriter

        a = self.args
        try:
            writer = VideoWriter(self.output(overlay), reader.rate)
        except BaseException:
            reader.close()
            raise
        bar = tqdm(total=reader.frames, unit="frame", desc=Path(overlay).stem, disable=not self.progress)
        batch: list[np.ndarray] = []
        count = 0
        ended: str | None = None

        def flush() -> None:
            nonlocal count
            for r in self.predictor.predict_batch(batch, None, a.score_threshold, a.max_dets):
                writer.write(r.plot())
                if a.save_json:
                    self.entries += [dict(e, file_name=name, frame=count) for e in r.to_coco(self._new_id())]
                count += 1
                self.frames += 1
                self.instances += len(r)
                bar.update(1)
            batch.clear()

        def wanted() -> bool:
            return a.max_frames is None or count + len(batch) < a.max_frames

        try:
            if live:
                with StopSignals() as stop:
                    feed = FrameFeed(reader, a.batch_size)
                    try:
                        while wanted() and (frame := feed.next(stop)) is not None:
                            batch.append(frame)
                            if len(batch) == a.batch_size:
                                flush()
                    except FastInstError as e:
                        if count + len(batch) == 0:
                            raise
                        ended = f"ended with an error: {str(e).removeprefix(f'{name}: ')}"
                    finally:
                        feed.close()
                    if batch:
                        flush()  # the frames already read are written too
                    if stop.received:
                        ended = f"stopped by {stop.received}"
            else:
                with reader:
                    for frame in reader:
                        if not wanted():
                            break
                        batch.append(frame)
                        if len(batch) == a.batch_size:
                            flush()
                    if batch:
                        flush()
        except BaseException:
            writer.abort()
            bar.close()
            raise
        writer.close()
        bar.close()
        if ended:
            print(f"{name}: {ended} after {count} frames; {writer.path} is complete", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..files import check_output

    files, live = collect_sources(args.sources)
    if args.webcam is not None:
        live.append(camera_source(args.webcam))
    if not files and not live:
        raise FastInstError("name a SOURCE (image, folder, glob, video, camera index or stream URL) or --webcam N")
    out = check_output(args.output, inputs=[p for p, _ in files], kind="dir")
    dataset, index = _identity(args)
    predictor = build_predictor(args, dataset)
    print(f"predict: {predictor.describe()}", flush=True)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _predict_into(args, out, files, live, dataset, index, predictor)
    except BaseException:
        if created and not any(out.iterdir()):  # a run that failed before writing anything leaves no empty folder
            out.rmdir()
        raise


def _predict_into(args, out: Path, files, live, dataset, index, predictor) -> int:
    from ..data.images import is_video
    from ..files import write_json

    images = [(p, lenient) for p, lenient in files if not is_video(p)]
    videos = [(p, lenient) for p, lenient in files if is_video(p)]
    progress = any(lenient for _, lenient in files) or bool(videos) or bool(live)
    state = _Run(args, predictor, out, progress, index, [p for p, _ in files])
    if images:
        state.run_images(images)
    for path, lenient in videos:
        state.run_video(path, lenient)
    for source in live:
        state.run_live(source)
    if args.save_json:
        if state.unmatched:
            where = dataset.name if dataset is not None else args.classes
            print(
                f"note: {len(state.unmatched)} image(s) are not in {where} (e.g. {state.unmatched[0]}); they got new "
                f"ids above its largest, {index.max_id}",
                file=sys.stderr,
            )
        write_json(out / "predictions.json", state.entries)
        write_json(out / "predictions.run.json", run_record(predictor))
    parts = [f"{state.images} image{'s' * (state.images != 1)}"]
    if videos or live:
        parts.append(f"{state.frames} video frames")
    parts.append(f"{state.instances} instances (score >= {args.score_threshold:g})")
    if state.skipped:
        parts.append(f"{state.skipped} skipped")
    print(f"predict: {', '.join(parts)} -> {out}")
    return 0 if state.images or state.frames else 1
