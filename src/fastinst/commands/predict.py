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
matched by file name (`fastinst.engine.results_file.ImageIndex`); other images and video frames get fresh ids above the
dataset's largest. Without one, numeric stems are the ids (000000397133.jpg -> 397133), else 1, 2, 3... in order.
Classes: the model's classes take the ids of the dataset's (or a COCO `--classes` json's) categories of the same name
(`fastinst.classes`); classes the dataset lacks are drawn but left out of the JSON.

Live sources (`parse_source`): a camera index (`0`, or `--webcam [N]`), a camera device (`/dev/video0`) or a stream
URL (rtsp, rtmp, http(s), udp, tcp) is read with PyAV frame by frame as frames arrive; `--max-frames`, Ctrl-C,
SIGTERM or the end of the stream finish the overlay video (complete, under its final name) and the JSON. A source
without a known end (a camera, a live stream) is kept live: the frames that arrive while the model is busy are
dropped and counted (the summary line, `predictions.run.json`), unless `--every-frame`; the overlay video keeps the
source's timing. An http(s) URL whose path ends in an image extension is downloaded as an image. `--timeout` is how
long a URL may send nothing (`URL: no data for 10 s (timeout)`). With `--save-json` the entries go to disk as they
come (`JsonListWriter`): memory stays flat over a stream of any length.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_SCORE_THRESHOLD
from ..engine.sources import STREAM_TIMEOUT, camera_source, collect_sources
from ..errors import FastInstError
from ._options import add_backend, add_device, add_dtype, positive_float, positive_int, probability
from ._predict_run import PredictRun

THRESHOLD_HELP = (
    f"keep instances scoring at least this (default {DEFAULT_SCORE_THRESHOLD:g}; --confidence-threshold is the "
    "official demo's name for it). "
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
        "(/dev/video0), stream URL (rtsp://, rtmp://, http(s)://, udp://, tcp://) or image URL (http(s)://.../x.jpg)",
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
        "--every-frame",
        action="store_true",
        help="predict every frame of cameras and live streams, even when the model is slower than the source (it "
        "then falls behind); by default such frames are dropped so that results stay live (video files and "
        "recordings always give every frame)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=STREAM_TIMEOUT[1],
        metavar="SECONDS",
        help=f"give up on a URL that sends nothing for this long (default {STREAM_TIMEOUT[1]:g})",
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
    p.add_argument(
        "--score-threshold",
        "--confidence-threshold",
        type=probability,
        default=DEFAULT_SCORE_THRESHOLD,
        help=THRESHOLD_HELP,
    )
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


def run_record(predictor, videos: list[dict] | None = None) -> dict:
    """The side file of predictions.json (`predictions.run.json`): what ran (`Predictor.run_info`), the fastinst
    version, and the classes the entries' category ids stand for ({id, name}), which `fastinst eval --results` uses
    to match them to the ground truth's by name and to score only the classes the model knows; with `videos`, one
    {source, frames (predicted), dropped (to keep up with a live source), live} per video, camera or stream."""
    from .. import __version__

    classes = [
        {"id": int(c), "name": str(n)}
        for n, c in zip(predictor.names, predictor.category_ids, strict=True)
        if c is not None
    ]
    record: dict[str, Any] = {"run": dict(predictor.run_info, fastinst=__version__), "classes": classes}
    if videos:
        record["videos"] = videos
    return record


def _identity(args: argparse.Namespace) -> tuple[Any, Any]:
    """-> (the `--data` dataset or None, an `ImageIndex` of the images whose ids predictions take, or None)."""
    from ..engine.results_file import ImageIndex

    if args.data:
        from ..data.registry import load_dataset

        ds = load_dataset(args.data, split=args.split)
        return ds, ImageIndex(ds.coco["images"], ds.image_root)
    spec = Path(args.classes) if args.classes else None
    if spec is None or spec.suffix.lower() != ".json" or not spec.is_file():
        return None, None
    from ..data.jsonfiles import read_json

    data = read_json(spec)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images:
        return None, None  # a categories-only json names classes and nothing else
    if not all(isinstance(im, dict) and isinstance(im.get("id"), int) and "file_name" in im for im in images):
        raise FastInstError(f"{spec}: its 'images' need integer 'id' and 'file_name' to give predictions their ids")
    return None, ImageIndex(images)


def run(args: argparse.Namespace) -> int:
    from ..files import check_output

    files, live = collect_sources(args.sources)
    if args.webcam is not None:
        live.append(camera_source(args.webcam))
    if not files and not live:
        raise FastInstError("name a SOURCE (image, folder, glob, video, camera index or stream URL) or --webcam N")
    out = check_output(args.output, inputs=[p for p, _ in files], kind="dir")
    if args.save_json:
        _check_json_outputs(out, args)
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


def _check_json_outputs(out: Path, args: argparse.Namespace) -> None:
    """--save-json never replaces a file the run reads (a `--classes` or `--data` json named predictions.json)."""
    from ..files import same_file

    for spec in (args.classes, args.data):
        if spec and Path(spec).is_file():
            for name in ("predictions.json", "predictions.run.json"):
                if same_file(out / name, spec):
                    raise FastInstError(f"{out / name}: --save-json would replace {spec}, an input; choose --output")


def _predict_into(args, out: Path, files, live, dataset, index, predictor) -> int:
    from ..data.images import is_video
    from ..engine.writers import JsonListWriter
    from ..files import write_json

    images = [(p, lenient) for p, lenient in files if not is_video(p)]
    videos = [(p, lenient) for p, lenient in files if is_video(p)]
    urls = [s for s in live if s.kind == "image"]
    streams = [s for s in live if s.kind != "image"]
    progress = any(lenient for _, lenient in files) or bool(videos) or bool(streams)
    entries = JsonListWriter(out / "predictions.json") if args.save_json else None
    state = PredictRun(args, predictor, out, progress, index, [p for p, _ in files], entries)
    try:
        if images:
            state.run_images(images)
        for source in urls:
            state.run_image_url(source)
        for path, lenient in videos:
            state.run_video(path, lenient)
        for source in streams:
            state.run_live(source)
    except BaseException:
        if entries is not None:
            entries.abort()
        raise
    if entries is not None:
        if state.unmatched:
            where = dataset.name if dataset is not None else args.classes
            print(
                f"note: {len(state.unmatched)} image(s) are not in {where} (e.g. {state.unmatched[0]}); they got new "
                f"ids above its largest, {index.max_id}",
                file=sys.stderr,
            )
        entries.close()
        write_json(out / "predictions.run.json", run_record(predictor, state.videos))
    parts = [f"{state.images} image{'s' * (state.images != 1)}"]
    if videos or streams:
        dropped = f" ({state.dropped} dropped to keep up with live sources)" if state.dropped else ""
        parts.append(f"{state.frames} video frames{dropped}")
    parts.append(f"{state.instances} instances (score >= {args.score_threshold:g})")
    if state.skipped:
        parts.append(f"{state.skipped} skipped")
    print(f"predict: {', '.join(parts)} -> {out}")
    return 0 if state.images or state.frames else 1
