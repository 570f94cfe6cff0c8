"""`fastinst app`: a local web page to try a model on photos — upload, drop or snapshot an image, see its instances.

Built on the standard library (`engine/serving.py`: a pooled HTTP/1.1 server with timeouts and strict parsing) and
one self-contained page (`app.html`, package data: inline CSS and JavaScript, nothing fetched from elsewhere;
docs/app.md says why not Gradio). This module is the routes and the server; the state behind them (the model choices
and cache, recent results, the heavy section of a request: `App`) is `engine/app_state.py`.

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

import os
import re
import shutil
import socket
import tempfile
import threading
import traceback
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import FastInstError
from .app_state import App, ModelUnavailable, one_line
from .multipart import HTTPError
from .serving import PooledServer, StrictHandler, content_disposition

PAGE = Path(__file__).with_name("app.html")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_RESULT = re.compile(r"/api/results/(r[0-9a-f]{16})/(overlay\.png|coco\.json)")
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


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
            self.send_json(400, {"error": one_line(e), **extra})
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
