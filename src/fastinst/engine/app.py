"""`fastinst app`: a local web page to try a model on photos — upload, drop or snapshot an image, see its instances.

Built on the standard library (`http.server.ThreadingHTTPServer`) and one self-contained page (`app.html`, package
data: inline CSS and JavaScript, nothing fetched from elsewhere; docs/app.md says why not Gradio). Requests are served
on threads; the model runs one request at a time (`App.lock`).

Routes (all JSON answers are objects; an error is `{"error": "<one line>"}` with a 4xx/5xx status):

* `GET /` — the page. `GET /api/info` — the model choices, the default choice, the score threshold and the limits.
* `POST /api/predict?model=K&threshold=T&name=N` — body: the image file's bytes (at most `max_upload` bytes).
  -> `{"id", "name", "width", "height", "model", "time_ms", "instances": [{"class", "score", "box": [x0, y0, x1, y1],
  "area", "color": [r, g, b] (the overlay's colour)}], "overlay": URL, "coco": URL}`. `K` indexes `App.choices`; a
  request never names a server path.
* `GET /api/results/<id>/overlay.png`, `GET /api/results/<id>/coco.json` — the downloads of a recent result (the last
  `keep_results` are kept in memory).

Errors: a `FastInstError` (an unreadable or oversized image, a checkpoint that does not fit) is shown as it is, with
the upload's own name in place of the temporary file; anything else is a short generic line on the page and a
traceback in the server's log. The server keeps serving either way.
"""

from __future__ import annotations

import gc
import http.server
import io
import json
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import FastInstError

PAGE = Path(__file__).with_name("app.html")
DEFAULT_MAX_UPLOAD = 40 * 1024 * 1024  # bytes
DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo; larger images are refused from their header
MAX_DETECTIONS = 100
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Choice:
    """One entry of the page's model select: a variant (name, alias or YAML) and its weights (a checkpoint path given
    when the server started, or "official")."""

    model: str | None
    weights: str | None
    label: str


def default_choices(model: str | None, weights: list[str]) -> list[Choice]:
    """The page's model choices: each `--weights` with `--model` (the first is the default), then every published
    variant with its official weights (downloaded into the cache the first time it is chosen)."""
    from ..config import ALIASES, PUBLISHED, canonical_name, get_config

    choices = []
    for w in weights:
        if w == "official":
            label = f"{model} · official weights"
        else:
            label = f"{Path(w).name}" + (f" ({model})" if model else "")
        choices.append(Choice(model, w, label))
    alias = {v: k for k, v in ALIASES.items()}
    start = {(canonical_name(c.model), c.weights) for c in choices if c.model and c.weights == "official"}
    for name in PUBLISHED:
        if (name, "official") not in start and get_config(name).weights_url:
            choices.append(Choice(name, "official", f"{alias.get(name, name)} · official weights (download)"))
    return choices


class App:
    """The state behind the page: the model choices, a small cache of loaded models, recent results, the limits.

    `loaded` may hand over the Predictor of choice 0, already built (so a bad start fails before the server opens).
    Models are loaded on first use and at most `cache_size` stay in memory (least recently used leaves first)."""

    def __init__(
        self,
        choices: list[Choice],
        device: str = "auto",
        dtype: str = "auto",
        backend: str = "torch",
        score_threshold: float = 0.3,
        max_upload: int = DEFAULT_MAX_UPLOAD,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        loaded: Any = None,
        cache_size: int = 2,
        keep_results: int = 16,
        log=None,
    ):
        if not choices:
            raise FastInstError("fastinst app: no model to serve; pass --model NAME and --weights PATH|official")
        self.choices = choices
        self.device, self.dtype, self.backend = device, dtype, backend
        self.score_threshold = score_threshold
        self.max_upload, self.max_pixels = max_upload, max_pixels
        self.cache_size, self.keep_results = max(1, cache_size), max(1, keep_results)
        self.lock = threading.Lock()  # one model load / inference at a time
        self.models: OrderedDict[int, Any] = OrderedDict()
        if loaded is not None:
            self.models[0] = loaded
        self.results: OrderedDict[str, tuple[bytes, bytes, str]] = OrderedDict()  # id -> (png, coco json, stem)
        self._results_lock = threading.Lock()
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    # -- the model -------------------------------------------------------------------------------------------------

    def predictor(self, index: int):
        """The Predictor of choice `index`, loading it (and dropping the least recently used) if needed. Call under
        `lock`."""
        if index in self.models:
            self.models.move_to_end(index)
            return self.models[index]
        from ..factory import load_backend
        from .predictor import Predictor

        choice = self.choices[index]
        while len(self.models) >= self.cache_size:
            self.models.popitem(last=False)
            gc.collect()
            _empty_device_cache()
        self.log(f"loading {choice.label}")
        model = load_backend(self.backend, choice.model, choice.weights, self.device, dtype=self.dtype)
        self.models[index] = Predictor(model, dtype=self.dtype)
        self.log(f"loaded {choice.label}: {self.models[index].describe()}")
        return self.models[index]

    def info(self) -> dict:
        return {
            "models": [{"id": i, "label": c.label} for i, c in enumerate(self.choices)],
            "default": 0,
            "threshold": self.score_threshold,
            "max_upload": self.max_upload,
            "max_pixels": self.max_pixels,
        }

    # -- one image ---------------------------------------------------------------------------------------------------

    def predict(self, data: bytes, name: str, model: int, threshold: float) -> dict:
        """Decode the uploaded bytes, run choice `model` at `threshold`, keep the downloads -> the JSON answer."""
        from ..data.images import read_image
        from ..visualize import instance_colour

        if not 0 <= model < len(self.choices):
            raise FastInstError(
                f"model choice {model}: there are {len(self.choices)} choices (0-{len(self.choices) - 1})"
            )
        if not 0.0 <= threshold <= 1.0:
            raise FastInstError(f"score threshold {threshold:g}: must be between 0 and 1")
        name = safe_name(name)
        with tempfile.TemporaryDirectory(prefix="fastinst-app-") as tmp:
            path = Path(tmp) / f"upload{Path(name).suffix.lower()[:8]}"
            path.write_bytes(data)
            try:
                image = read_image(path, max_pixels=self.max_pixels)
            except FastInstError as e:
                raise FastInstError(str(e).replace(str(path), name)) from None
        with self.lock:
            predictor = self.predictor(model)
            start = time.perf_counter()
            (result,) = predictor.predict_batch([image], [Path(name)], threshold, MAX_DETECTIONS)
            elapsed = time.perf_counter() - start
        png = png_bytes(result.plot())
        coco = json.dumps(result.to_coco(1)).encode()
        areas = result.masks.reshape(len(result), -1).sum(1) if len(result) else []
        instances = [
            {
                "class": cls,
                "score": round(float(s), 4),
                "box": [round(float(v), 1) for v in box],
                "area": int(a),
                "color": list(instance_colour(i)),
            }
            for i, (cls, s, box, a) in enumerate(
                zip(result.instance_names, result.scores, result.boxes, areas, strict=True)
            )
        ]
        rid = self._keep(png, coco, Path(name).stem)
        self.log(f"{name}: {len(instances)} instances (score >= {threshold:g}) in {elapsed * 1000:.0f} ms")
        return {
            "id": rid,
            "name": name,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "model": self.choices[model].label,
            "time_ms": round(elapsed * 1000, 1),
            "instances": instances,
            "overlay": f"/api/results/{rid}/overlay.png",
            "coco": f"/api/results/{rid}/coco.json",
        }

    def _keep(self, png: bytes, coco: bytes, stem: str) -> str:
        with self._results_lock:
            rid = f"r{secrets.token_hex(8)}"  # not guessable: with --host 0.0.0.0 one user cannot fetch another's
            self.results[rid] = (png, coco, stem)
            while len(self.results) > self.keep_results:
                self.results.popitem(last=False)
        return rid

    def result(self, rid: str) -> tuple[bytes, bytes, str] | None:
        with self._results_lock:
            return self.results.get(rid)


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def safe_name(name: str) -> str:
    """An upload's file name as shown and downloaded: its last path part, odd characters replaced, at most 100."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _SAFE_NAME.sub("_", base).strip(" .") or "image"
    return base[-100:]


class _Refused(Exception):
    """A request answered with an error status before any work (bad route, size, origin)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Handler(http.server.BaseHTTPRequestHandler):
    """One request. `server.app` is the `App`; every error becomes a JSON answer and the server keeps serving."""

    server: Server
    server_version = "fastinst-app"
    protocol_version = "HTTP/1.1"

    # -- answers -----------------------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _guarded(self, work) -> None:
        """Run one route; every failure becomes a JSON error. After a failed POST the connection is closed, as its
        body may be unread."""
        try:
            self._check_host()
            work()
        except _Refused as e:
            self.close_connection = True
            self._error(e.status, str(e))
        except FastInstError as e:
            self.close_connection = self.close_connection or self.command == "POST"
            self._error(400, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        except MemoryError:
            self.close_connection = True
            self.server.app.log(f"{self.command} {self.path}: out of memory")
            self._error(500, "out of memory while handling this image; try a smaller one")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except Exception:  # noqa: BLE001 - any bug must not stop the server; the log keeps the traceback
            self.close_connection = True
            self.server.app.log(f"{self.command} {self.path}: internal error\n{traceback.format_exc().rstrip()}")
            self._error(500, "internal error while handling the request (the server's log has the details)")

    # -- checks ------------------------------------------------------------------------------------------------------

    def _check_host(self) -> None:
        """On a loopback address, refuse requests for other host names (DNS rebinding: a web page cannot reach the
        app through a name of its own) and cross-origin POSTs (another page posting to the app)."""
        if not self.server.loopback:
            return
        port = self.server.server_address[1]
        names = ("127.0.0.1", "localhost", "[::1]")
        allowed = {f"{h}:{port}" for h in names} | (set(names) if port == 80 else set())
        host = (self.headers.get("Host") or "").lower()
        if host not in allowed:
            raise _Refused(403, f"host {host!r} refused: open the app at http://127.0.0.1:{port}/")
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin is not None and origin.lower() not in {f"http://{a}" for a in allowed}:
            raise _Refused(403, f"requests from {origin} are refused")

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _Refused(411, "the upload needs a Content-Length")
        size, limit = int(length), self.server.app.max_upload
        if size > limit:
            raise _Refused(413, f"the upload is {size / 2**20:.1f} MB, over the limit of {limit / 2**20:.1f} MB")
        if size == 0:
            raise FastInstError("the upload is empty (0 bytes)")
        return self.rfile.read(size)

    # -- routes ------------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_HEAD(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _get(self) -> None:
        route = urlsplit(self.path).path
        app = self.server.app
        if route in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8", {"Content-Security-Policy": CSP})
        elif route == "/api/info":
            self._json(200, app.info())
        elif route == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        elif m := re.fullmatch(r"/api/results/(r[0-9a-f]+)/(overlay\.png|coco\.json)", route):
            found = app.result(m[1])
            if found is None:
                raise _Refused(404, f"result {m[1]} is no longer kept; run the image again")
            png, coco, stem = found
            body, kind, name = (
                (png, "image/png", f"{stem}_overlay.png")
                if m[2] == "overlay.png"
                else (
                    coco,
                    "application/json",
                    f"{stem}_coco.json",
                )
            )
            self._send(200, body, kind, {"Content-Disposition": f'attachment; filename="{name}"'})
        else:
            raise _Refused(404, f"no such page: {route}")

    def _post(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/api/predict":
            raise _Refused(404, f"no such page: {parts.path}")
        data = self._body()  # first: it checks the size before reading, and the body is then consumed
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        app = self.server.app
        try:
            model = int(query.get("model", "0"))
            threshold = float(query.get("threshold", app.score_threshold))
        except ValueError:
            raise FastInstError("model must be a whole number and threshold a number") from None
        self._json(200, app.predict(data, query.get("name", "image"), model, threshold))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per image is logged by App.predict; errors by _guarded


class Server(http.server.ThreadingHTTPServer):
    """The HTTP server of one `App`: a thread per request, daemon threads (Ctrl-C never waits on a browser)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: App, host: str, port: int):
        self.app = app
        self.page = PAGE.read_bytes()
        self.loopback = host in LOOPBACK
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), Handler)
        except OSError as e:
            if e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                raise FastInstError(
                    f"--port {port}: already in use on {host}; pass another (--port 0 picks a free one)"
                ) from None
            raise FastInstError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def serve(app: App, host: str = "127.0.0.1", port: int = 7860, ready=None) -> None:
    """Serve `app` until Ctrl-C (or SIGTERM, in the main thread); `ready(server)` is called once it listens."""
    import signal

    server = Server(app, host, port)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if ready is not None:
            ready(server)
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def png_bytes(image) -> bytes:
    """uint8 RGB array -> PNG file bytes (for tests and tools)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
