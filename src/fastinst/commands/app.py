"""`fastinst app [--model NAME] [--weights PATH|official ...] [--port N] [--host 127.0.0.1]`: a local web page to try a
model — drop or upload images or take a camera snapshot, see the overlay and the instance table, download the overlay
PNG and the COCO JSON. Prints the page's URL and serves until Ctrl-C (docs/app.md).

The first `--weights` (with `--model`) is loaded before the server opens, so a bad checkpoint or model name is a
one-line error here; further `--weights` files and the published variants' official weights are offered on the page
and loaded when chosen (a failure is shown on the page). The page never names a server path: it chooses among these.
"""

from __future__ import annotations

import argparse
import sys

from ..defaults import DEFAULT_SCORE_THRESHOLD
from ..errors import FastInstError
from ._options import add_device, add_dtype, positive_float, probability


def add_parser(sub) -> None:
    p = sub.add_parser(
        "app",
        help="a local web page: drop in photos, see the instances",
        description="Start a local web page (standard library server, one self-contained page, works offline) to "
        "try a model on uploaded, dropped or camera images; prints its URL and serves until Ctrl-C. Scripts can post "
        "images too: curl -F file=@photo.jpg http://127.0.0.1:7860/api/predict (docs/app.md: the API, the memory "
        "bound).",
    )
    p.add_argument(
        "--model",
        help="variant name, alias or YAML config (default: the checkpoint's own, or fastinst-d1-r50 with official "
        "weights)",
    )
    p.add_argument(
        "--weights",
        action="append",
        metavar="PATH|official",
        help="checkpoint file, or 'official' for the release weights (downloaded and cached); repeat to offer "
        "several on the page; the first is loaded at start (default: official)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument("--port", type=_port, default=7860, metavar="N", help="port (default 7860; 0 picks a free one)")
    p.add_argument(
        "--score-threshold",
        type=probability,
        default=DEFAULT_SCORE_THRESHOLD,
        metavar="T",
        help=f"the page's starting score threshold (default {DEFAULT_SCORE_THRESHOLD:g})",
    )
    p.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=40.0,
        metavar="MB",
        help="largest image file accepted, in MB (default 40)",
    )
    p.add_argument(
        "--max-megapixels",
        type=positive_float,
        metavar="MP",
        default=40.0,
        help="largest image accepted, in megapixels, checked from the header before decoding (default 40)",
    )
    add_device(p)
    add_dtype(p, "auto", "precision (default auto)")
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "openvino"],
        help="PyTorch (default) or OpenVINO (the weights exported once into the fastinst cache, compiled for the CPU)",
    )


def _port(value: str) -> int:
    if not value.isdigit() or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value!r}")
    return int(value)


def run(args: argparse.Namespace) -> int:
    from ..engine.app import LOOPBACK, serve
    from ..engine.app_state import App, default_choices
    from ..engine.predictor import Predictor
    from ..factory import load_backend

    weights = args.weights or ["official"]
    if args.model is None and "official" in weights:
        args.model = "fastinst-d1-r50"
    for w in weights[1:]:
        if w != "official" and not _is_file(w):
            raise FastInstError(f"--weights {w}: no such checkpoint file")
    choices = default_choices(args.model, weights)
    first = choices[0]
    model = load_backend(args.backend, first.model, first.weights, args.device, dtype=args.dtype)
    predictor = Predictor(model, dtype=args.dtype)
    app = App(
        choices,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        score_threshold=args.score_threshold,
        max_upload=int(args.max_upload_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
        loaded=predictor,
    )
    if args.host not in LOOPBACK:
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can use the page (no login); "
            "use the default --host 127.0.0.1 to keep it to this machine",
            file=sys.stderr,
            flush=True,
        )

    def ready(server) -> None:
        print(f"fastinst app: {first.label}: {predictor.describe()}", flush=True)  # what runs, as predict says it
        print(f"open {server.url}  (Ctrl-C stops)", flush=True)

    serve(app, args.host, args.port, ready)
    print("fastinst app: stopped", flush=True)
    return 0


def _is_file(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_file()
