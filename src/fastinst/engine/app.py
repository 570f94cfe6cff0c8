"""`fastinst app`: a local web page to try a model on photos — upload, drop or snapshot an image, see its instances.

Built on the standard library (`engine/serving.py`: a pooled HTTP/1.1 server with timeouts and strict parsing) and
one self-contained page (`app.html`, package data: inline CSS and JavaScript, nothing fetched from elsewhere;
docs/app.md says why not Gradio).

Memory: an upload is streamed into a temporary file; the whole heavy part of a request (decode, network, masks,
overlay, PNG and COCO encodings: `App.predict_file`) runs one request at a time (`App.gate`), and with one
full-size mask in memory at a time (`engine/compact.py`). At most `waiting` more uploads wait for their turn (on
disk); the next one is answered 503 with Retry-After.

Routes (all JSON answers are objects; an error is `{"error": "<one line>"}` with a 4xx/5xx status):

* `GET /` — the page. `GET /api/info` — the model choices, the default choice, the score threshold and the limits.
* `POST /api/predict?model=K&threshold=T&name=N` — body: the image file's bytes, or multipart/form-data with one
  file part (and optional `model`, `threshold`, `name` fields). -> `{"id", "image_id", "name", "width", "height",
  "model", "time_ms", "instances": [{"class", "category_id", "score", "box": [x0, y0, x1, y1], "area", "color"}],
  "overlay": URL, "coco": URL}` (docs/app.md). `K` indexes `App.choices`; a request never names a server path.
* `GET /api/results/<id>/overlay.png`, `GET /api/results/<id>/coco.json` — the downloads of a recent result (kept
  on disk in a private temporary folder, the newest `keep_results` / `keep_bytes`; an older one answers 404).

Errors: a `FastInstError` (an unreadable or oversized image, a checkpoint that does not fit) is shown as it is, with
the upload's own name in place of the temporary file; a model that cannot be loaded is remembered and answered at
once (`"model_error": true`) until a request asks `retry=1`; anything else is a short generic line on the page and
a traceback in the server's log. The server keeps serving either way.
"""

from __future__ import annotations

import gc
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..defaults import DEFAULT_SCORE_THRESHOLD
from ..errors import FastInstError
from .serving import Gate, HTTPError, PooledServer, StrictHandler, content_disposition

PAGE = Path(__file__).with_name("app.html")
DEFAULT_MAX_UPLOAD = 40 * 1024 * 1024  # bytes
DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo; larger images are refused from their header
MAX_DETECTIONS = 100
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_RESULT = re.compile(r"/api/results/(r[0-9a-f]{16})/(overlay\.png|coco\.json)")
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


class ModelUnavailable(FastInstError):
    """A model choice that could not be loaded (its message is remembered and repeated without a new attempt)."""


class ResultStore:
    """Recent results on disk, in a private temporary folder: the newest `keep` results within `keep_bytes`."""

    def __init__(self, keep: int, keep_bytes: int):
        self.root = Path(tempfile.mkdtemp(prefix="fastinst-app-results-"))  # mode 0700
        self.keep, self.keep_bytes = max(1, keep), keep_bytes
        self._items: OrderedDict[str, tuple[str, int]] = OrderedDict()  # id -> (upload name, bytes)
        self._lock = threading.Lock()

    def new(self) -> tuple[str, Path]:
        rid = f"r{secrets.token_hex(8)}"  # not guessable: with --host 0.0.0.0 one user cannot fetch another's
        folder = self.root / rid
        folder.mkdir()
        return rid, folder

    def add(self, rid: str, name: str) -> None:
        size = sum(f.stat().st_size for f in (self.root / rid).iterdir())
        with self._lock:
            self._items[rid] = (name, size)
            total = sum(s for _, s in self._items.values())
            while len(self._items) > 1 and (len(self._items) > self.keep or total > self.keep_bytes):
                old, (_, old_size) = self._items.popitem(last=False)
                total -= old_size
                shutil.rmtree(self.root / old, ignore_errors=True)

    def open(self, rid: str, file: str):
        """-> (the open file, the upload's name), or None when the result is no longer kept."""
        with self._lock:
            if rid not in self._items:
                return None
            return open(self.root / rid / file, "rb"), self._items[rid][0]  # readable even if removed next

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


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
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_upload: int = DEFAULT_MAX_UPLOAD,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        loaded: Any = None,
        cache_size: int = 2,
        keep_results: int = 500,
        keep_bytes: int = 2 << 30,
        waiting: int = 32,
        log=None,
    ):
        if not choices:
            raise FastInstError("fastinst app: no model to serve; pass --model NAME and --weights PATH|official")
        self.choices = choices
        self.device, self.dtype, self.backend = device, dtype, backend
        self.score_threshold = score_threshold
        self.max_upload, self.max_pixels = max_upload, max_pixels
        self.cache_size = max(1, cache_size)
        self.gate = Gate(waiting)
        self.results = ResultStore(keep_results, keep_bytes)
        self.models: OrderedDict[int, Any] = OrderedDict()
        if loaded is not None:
            self.models[0] = loaded
        self.failed: dict[int, str] = {}  # choice -> why it could not be loaded
        self.seconds = 1.0  # the last heavy section's duration, for Retry-After
        self._last_image_id = 0
        self._id_lock = threading.Lock()
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    # -- the model -------------------------------------------------------------------------------------------------

    def predictor(self, index: int, retry: bool = False):
        """The Predictor of choice `index`, loading it (and dropping the least recently used) if needed; a choice
        that failed to load raises its `ModelUnavailable` again without a new attempt, unless `retry`. Call in the
        heavy section."""
        if index in self.models:
            self.models.move_to_end(index)
            return self.models[index]
        if index in self.failed and not retry:
            raise ModelUnavailable(self.failed[index])
        from ..factory import load_backend
        from .predictor import Predictor

        choice = self.choices[index]
        while len(self.models) >= self.cache_size:
            self.models.popitem(last=False)
            gc.collect()
            _empty_device_cache()
        self.log(f"loading {choice.label}")
        try:
            model = load_backend(self.backend, choice.model, choice.weights, self.device, dtype=self.dtype)
        except FastInstError as e:
            self.failed[index] = _one_line(e)
            self.log(f"{choice.label}: {self.failed[index]}")
            raise ModelUnavailable(self.failed[index]) from None
        self.failed.pop(index, None)
        self.models[index] = Predictor(model, dtype=self.dtype)
        self.log(f"loaded {choice.label}: {self.models[index].describe()}")
        return self.models[index]

    def info(self) -> dict:
        return {
            "models": [
                {"id": i, "label": c.label, **({"error": self.failed[i]} if i in self.failed else {})}
                for i, c in enumerate(self.choices)
            ],
            "default": 0,
            "threshold": self.score_threshold,
            "max_upload": self.max_upload,
            "max_pixels": self.max_pixels,
        }

    def check(self, model: int, threshold: float) -> None:
        if not 0 <= model < len(self.choices):
            raise FastInstError(
                f"model choice {model}: there are {len(self.choices)} choices (0-{len(self.choices) - 1})"
            )
        if not 0.0 <= threshold <= 1.0:
            raise FastInstError(f"score threshold {threshold:g}: must be between 0 and 1")

    def retry_after(self) -> int:
        return int(min(600, max(1, round(self.gate.admitted() * self.seconds))))

    def image_id(self) -> int:
        """A new COCO image id: the upload's time in milliseconds since 1970, unique (and increasing) per upload."""
        with self._id_lock:
            self._last_image_id = max(self._last_image_id + 1, int(time.time() * 1000))
            return self._last_image_id

    # -- one image ---------------------------------------------------------------------------------------------------

    def predict_file(self, path: Path, name: str, model: int, threshold: float, retry: bool = False) -> dict:
        """The heavy section for the upload at `path` (call between `gate.wait` and `gate.finish`): decode it, run
        choice `model` at `threshold`, draw and keep the downloads -> the JSON answer."""
        from ..data.images import read_image
        from ..visualize import instance_colour
        from . import compact

        self.check(model, threshold)
        started = time.perf_counter()
        predictor = self.predictor(model, retry)
        try:
            image = read_image(path, max_pixels=self.max_pixels)
        except FastInstError as e:
            raise FastInstError(str(e).replace(str(path), name)) from None
        path.unlink(missing_ok=True)
        start = time.perf_counter()
        found = compact.find_instances(predictor, image, threshold, MAX_DETECTIONS)
        elapsed = time.perf_counter() - start
        height, width = int(image.shape[0]), int(image.shape[1])
        image_id = self.image_id()
        rid, folder = self.results.new()
        compact.draw_overlay(image, found, predictor.names)
        compact.write_png(folder / "overlay.png", image)
        del image
        entries = compact.coco_entries(found, predictor.names, predictor.category_ids, image_id, name)
        (folder / "coco.json").write_bytes(json.dumps(entries, ensure_ascii=False).encode())
        self.results.add(rid, name)
        ids = list(predictor.category_ids or range(1, len(predictor.names) + 1))
        instances = [
            {
                "class": predictor.names[inst.label],
                "category_id": ids[inst.label],
                "score": round(inst.score, 4),
                "box": [float(v) for v in inst.box],
                "area": inst.area,
                "color": list(instance_colour(i)),
            }
            for i, inst in enumerate(found)
        ]
        self.seconds = time.perf_counter() - started
        self.log(f"{name}: {len(instances)} instances (score >= {threshold:g}) in {elapsed * 1000:.0f} ms")
        return {
            "id": rid,
            "image_id": image_id,
            "name": name,
            "width": width,
            "height": height,
            "model": self.choices[model].label,
            "time_ms": round(elapsed * 1000, 1),
            "instances": instances,
            "overlay": f"/api/results/{rid}/overlay.png",
            "coco": f"/api/results/{rid}/coco.json",
        }

    def close(self) -> None:
        self.results.close()


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return " ".join(text.split()) if text else type(e).__name__


def safe_name(name: str) -> str:
    """An upload's file name as shown and downloaded: its last path part (NFC), control and format characters and
    `<>:"|?*` replaced by `_`, at most 100 characters; other Unicode is kept (`写真.jpg`)."""
    base = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join("_" if c in '<>:"|?*' or unicodedata.category(c)[0] == "C" else c for c in base)
    base = base.strip(" .") or "image"
    return base[-100:]


class Handler(StrictHandler):
    """One request. `server.app` is the `App`; every error becomes a JSON answer and the server keeps serving."""

    server: Server
    server_version = "fastinst-app"

    def _guarded(self, work) -> None:
        """Run one route; every failure becomes a JSON error. After a failed POST the connection is closed, as its
        body may be unread."""
        try:
            self._check_host()
            work()
        except HTTPError as e:
            self.close_connection = True
            self.send_json(e.status, {"error": str(e)}, e.headers)
        except FastInstError as e:
            self.close_connection = self.close_connection or self.command == "POST"
            extra = {"model_error": True} if isinstance(e, ModelUnavailable) else {}
            self.send_json(400, {"error": _one_line(e), **extra})
        except MemoryError:
            self.close_connection = True
            self.server.app.log(f"{self.command} {self.path}: out of memory")
            self.send_json(500, {"error": "out of memory while handling this image; try a smaller one"})
        except OSError:
            self.close_connection = True  # the browser went away, or a socket timed out
        except Exception:  # noqa: BLE001 - any bug must not stop the server; the log keeps the traceback
            self.close_connection = True
            self.server.app.log(f"{self.command} {self.path}: internal error\n{traceback.format_exc().rstrip()}")
            message = "internal error while handling the request (the server's log has the details)"
            self.send_json(500, {"error": message})

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
            raise HTTPError(403, f"host {host!r} refused: open the app at http://127.0.0.1:{port}/")
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin is not None and origin.lower() not in {f"http://{a}" for a in allowed}:
            raise HTTPError(403, f"requests from {origin} are refused")

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
            self.send_body(200, self.server.page, "text/html; charset=utf-8", {"Content-Security-Policy": CSP})
        elif route == "/api/info":
            self.send_json(200, app.info())
        elif route == "/favicon.ico":
            self.send_body(204, b"", "image/x-icon")
        elif m := _RESULT.fullmatch(route):
            opened = app.results.open(m[1], m[2])
            if opened is None:
                raise HTTPError(404, f"result {m[1]} has expired (only the most recent are kept); run the image again")
            f, name = opened
            with f:
                self._send_file(f, m[2], name)
        else:
            raise HTTPError(404, f"no such page: {route}")

    def _send_file(self, f, kind: str, name: str) -> None:
        stem = name.rsplit(".", 1)[0] if "." in name.strip(".") else name
        download, content_type = (
            (f"{stem}_overlay.png", "image/png")
            if kind == "overlay.png"
            else (f"{stem}_coco.json", "application/json; charset=utf-8")
        )
        size = os.fstat(f.fileno()).st_size
        self.send_response(200)
        for key, value in (
            ("Content-Type", content_type),
            ("Content-Length", str(size)),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Disposition", content_disposition(download)),
        ):
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            shutil.copyfileobj(f, self.wfile, 1 << 20)

    def _post(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/api/predict":
            raise HTTPError(404, f"no such page: {parts.path}")
        app = self.server.app
        size = self.content_length(app.max_upload)  # first: it checks the size before any byte is read
        if size == 0:
            raise FastInstError("the upload is empty (0 bytes)")
        ticket = app.gate.admit()
        if ticket is None:
            raise HTTPError(
                503,
                f"{app.gate.limit} images are already in line for the model; try again shortly",
                {"Retry-After": str(app.retry_after())},
            )
        try:
            with tempfile.TemporaryDirectory(prefix="fastinst-app-") as tmp:
                path = Path(tmp) / "upload"
                with open(path, "wb") as out:
                    upload = self.read_upload(size, out)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()} | upload.fields
                name = safe_name(query.get("name") or upload.filename or "image")
                if upload.size == 0:
                    raise FastInstError(f"{name}: the upload is empty (0 bytes)")
                try:
                    model = int(query.get("model", "0"))
                    threshold = float(query.get("threshold", app.score_threshold))
                except ValueError:
                    raise FastInstError("model must be a whole number and threshold a number") from None
                app.check(model, threshold)
                suffix = Path(name).suffix.lower()
                if re.fullmatch(r"\.[a-z0-9]{1,7}", suffix):
                    path = path.rename(path.with_suffix(suffix))  # read_image names a video by its suffix
                app.gate.wait(ticket)
                answer = app.predict_file(path, name, model, threshold, query.get("retry") == "1")
        finally:
            app.gate.finish(ticket)
        self.send_json(200, answer)


class Server(PooledServer):
    """The HTTP server of one `App` (`engine/serving.py`: a bounded worker pool, timeouts, strict parsing)."""

    def __init__(self, app: App, host: str, port: int, **options: Any):
        self.app = app
        self.page = PAGE.read_bytes()
        self.loopback = host in LOOPBACK
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), Handler, log=app.log, **options)
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


def serve(app: App, host: str = "127.0.0.1", port: int = 7860, ready=None, **options: Any) -> None:
    """Serve `app` until Ctrl-C (or SIGTERM, in the main thread); `ready(server)` is called once it listens.
    `options` go to `PooledServer` (workers, pending, idle_timeout, header_timeout)."""
    import signal

    server = Server(app, host, port, **options)
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
        app.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def png_bytes(image) -> bytes:
    """uint8 RGB array -> PNG file bytes (for tests and tools)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
