"""The HTTP layer of `fastinst app`: a standard-library HTTP/1.1 server that holds under load, strict request parsing
and streamed uploads (raw bytes or multipart/form-data) into a file.

* `PooledServer`: a listen backlog of `BACKLOG`, a fixed pool of worker threads fed by a bounded queue (a full queue
  is answered 503 with Retry-After at once), and one loop thread that accepts connections and holds idle ones (new,
  or kept alive between requests) in a selector until they send something, so idle or half-open connections cost no
  thread; it closes them after `idle_timeout`. A request's line and headers must arrive within `header_timeout` and
  its body at `MIN_UPLOAD_RATE` at least (slowloris): past that the loop thread shuts the socket's reading side and
  the handler answers 408.
* `StrictHandler`: exactly one ASCII-digit Content-Length on a body, no Transfer-Encoding, one Host; every error as
  a JSON object `{"error": "..."}` (the standard library's own 400/414/431/501/505 pages included); HTTP/0.9 is
  closed without an answer.
* `Gate`: a section that one request at a time enters, in arrival order, with a bounded line of waiting ones.
* `read_upload`: the body (its size checked before a byte is read) into a file, or the one file part of a
  multipart/form-data body plus its small text fields (`engine/multipart.py`: `MultipartReader`, `Upload`,
  `HTTPError`).
"""

from __future__ import annotations

import http.server
import json
import queue
import re
import selectors
import socket
import socketserver
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO
from urllib.parse import quote

from .multipart import HTTPError, MultipartReader, Upload

BACKLOG = 128  # the kernel's queue of connections not yet accepted (the standard library's default is 5)
WORKERS = 32  # threads that serve requests; a request waiting for the model holds one
PENDING = 64  # connections with a request that wait for a free worker; more are answered 503 at once
MAX_IDLE = 512  # idle connections held at once; beyond that the oldest is closed
IDLE_TIMEOUT = 60.0  # seconds a connection may stay open without sending a request
HEADER_TIMEOUT = 20.0  # seconds for a request's line and headers, from its first byte
READ_TIMEOUT = 20.0  # seconds without a byte while a request is read or an answer written
MIN_UPLOAD_RATE = 100_000  # bytes/s: a body's deadline is HEADER_TIMEOUT + its size at this rate
CHUNK = 1 << 20
_DIGITS = re.compile(r"[0-9]{1,15}")


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 error answer that closes the connection (for answers written outside a handler)."""
    body = json.dumps({"error": message}).encode()
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", "Content-Type: application/json"]
    lines += [f"Content-Length: {len(body)}", "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII `filename=` and, for any other name, the exact one as RFC 5987 `filename*=`."""
    ascii_name = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    value = f'attachment; filename="{ascii_name}"'
    return value if ascii_name == filename else f"{value}; filename*=UTF-8''{quote(filename, safe='')}"


class Gate:
    """The heavy section: one request at a time, in the order they were admitted, and at most `waiting` admitted
    requests besides the one inside (`admit` answers None beyond that)."""

    def __init__(self, waiting: int):
        self.limit = max(0, waiting) + 1
        self._cond = threading.Condition()
        self._next = self._serving = 0
        self._finished: set[int] = set()

    def admit(self) -> int | None:
        with self._cond:
            if self._next - self._serving >= self.limit:
                return None
            self._next += 1
            return self._next - 1

    def wait(self, ticket: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._serving == ticket)

    def finish(self, ticket: int) -> None:
        """Called once per ticket, after its turn or instead of it (an upload that failed before its turn)."""
        with self._cond:
            self._finished.add(ticket)
            while self._serving in self._finished:
                self._finished.remove(self._serving)
                self._serving += 1
            self._cond.notify_all()

    def admitted(self) -> int:
        with self._cond:
            return self._next - self._serving


class PooledServer(socketserver.TCPServer):
    """A TCP server with a bounded worker pool and an accept loop that holds idle connections (see the module)."""

    request_queue_size = BACKLOG
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[StrictHandler],
        *,
        workers: int = WORKERS,
        pending: int = PENDING,
        idle_timeout: float = IDLE_TIMEOUT,
        header_timeout: float = HEADER_TIMEOUT,
        log: Callable[[str], None] = print,
    ):
        super().__init__(address, handler)  # binds and listens; an OSError here leaves no thread behind
        self.idle_timeout, self.header_timeout, self.log = idle_timeout, header_timeout, log
        self._jobs: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue(maxsize=max(1, pending))
        self._back: queue.Queue[tuple[socket.socket, Any]] = queue.Queue()  # kept-alive connections from workers
        self._wake_r, self._wake_w = socket.socketpair()
        self._deadlines: dict[socket.socket, float] = {}
        self._expired: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._pool = [threading.Thread(target=self._work, daemon=True, name=f"http-{i}") for i in range(workers)]
        for t in self._pool:
            t.start()

    # -- the accept loop (one thread) -----------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        sel = selectors.DefaultSelector()
        self.socket.setblocking(False)
        sel.register(self.socket, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        idle: dict[socket.socket, tuple[Any, float]] = {}  # insertion order: oldest first
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(min(poll_interval, 0.25)):
                    if key.data == "listen":
                        self._accept(sel, idle)
                    elif key.data == "wake":
                        self._wake_r.recv(4096)
                    else:
                        conn = key.fileobj
                        assert isinstance(conn, socket.socket)
                        sel.unregister(conn)
                        self._dispatch(conn, idle.pop(conn)[0])
                while True:
                    try:
                        conn, addr = self._back.get_nowait()
                    except queue.Empty:
                        break
                    self._hold(sel, idle, conn, addr)
                self._expire(sel, idle)
                self.service_actions()
        finally:
            for conn in idle:
                _close(conn)
            sel.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop `serve_forever` (from another thread) and wait until it returned."""
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        if not hasattr(self, "_pool"):
            return  # binding failed: nothing else was started
        for _ in self._pool:
            try:
                self._jobs.put_nowait(None)
            except queue.Full:
                break
        # let a request still in a worker finish before the interpreter exits (a daemon thread stopped inside torch's
        # native code at exit can hang the process); bounded, so a stuck request cannot hold the stop
        deadline = time.monotonic() + 5.0
        for t in self._pool:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        _close(self._wake_r)
        _close(self._wake_w)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _accept(self, sel: selectors.BaseSelector, idle: dict) -> None:
        try:
            conn, addr = self.socket.accept()
        except OSError:  # gone before accept (reset), or out of descriptors: the next round tries again
            return
        self._hold(sel, idle, conn, addr)

    def _hold(self, sel: selectors.BaseSelector, idle: dict, conn: socket.socket, addr: Any) -> None:
        """Wait (without a thread) for `conn` to send a request."""
        while len(idle) >= MAX_IDLE:
            oldest = next(iter(idle))
            sel.unregister(oldest)
            del idle[oldest]
            _close(oldest)
        try:
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ, "conn")
        except (OSError, ValueError):
            _close(conn)
            return
        idle[conn] = (addr, time.monotonic())

    def _dispatch(self, conn: socket.socket, addr: Any) -> None:
        try:
            conn.settimeout(READ_TIMEOUT)
            self._jobs.put_nowait((conn, addr))
        except queue.Full:
            _answer_and_close(conn, json_error(503, "the server is busy; try again shortly", {"Retry-After": "5"}))
        except OSError:
            _close(conn)

    def _expire(self, sel: selectors.BaseSelector, idle: dict) -> None:
        now = time.monotonic()
        while idle:
            conn, (_, since) = next(iter(idle.items()))
            if now - since < self.idle_timeout:
                break
            sel.unregister(conn)
            del idle[conn]
            _close(conn)
        with self._lock:
            late = [c for c, t in self._deadlines.items() if t <= now]
            for conn in late:
                del self._deadlines[conn]
                self._expired.add(conn)
                try:
                    conn.shutdown(socket.SHUT_RD)  # the handler's read ends; it may still write its 408
                except OSError:
                    pass

    # -- deadlines, for handlers ----------------------------------------------------------------------------------

    def set_deadline(self, conn: socket.socket, seconds: float | None) -> None:
        """Shut `conn`'s reading side `seconds` from now (None: no deadline)."""
        with self._lock:
            if seconds is None:
                self._deadlines.pop(conn, None)
            else:
                self._deadlines[conn] = time.monotonic() + seconds

    def expired(self, conn: socket.socket) -> bool:
        with self._lock:
            return conn in self._expired

    def _forget(self, conn: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(conn, None)
            self._expired.discard(conn)

    # -- the workers ----------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, addr = job
            keep = False
            try:
                make: Any = self.RequestHandlerClass
                handler = make(conn, addr, self)
                keep = bool(getattr(handler, "keep_alive", False))
            except OSError:
                pass  # the client went away or timed out
            except Exception:  # noqa: BLE001 - a bug in one request must not end the worker
                self.log(f"HTTP handler failed:\n{traceback.format_exc().rstrip()}")
            self._forget(conn)
            if keep and not self._stop.is_set():
                self._back.put((conn, addr))
                self._wake()
            else:
                self.shutdown_request(conn)


def _close(conn: socket.socket) -> None:
    try:
        conn.close()
    except OSError:
        pass


def _answer_and_close(conn: socket.socket, data: bytes) -> None:
    """Write a short answer without blocking the accept loop for long, then close."""
    try:
        conn.settimeout(1.0)
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    _close(conn)


class StrictHandler(http.server.BaseHTTPRequestHandler):
    """One request per dispatch: strict framing checks, JSON errors, and `keep_alive` for the server to hold the
    connection idle again (when nothing of a next request is buffered yet)."""

    server: PooledServer
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT
    keep_alive = False

    def handle(self) -> None:
        self.close_connection = True
        self.server.set_deadline(self.connection, self.server.header_timeout)
        self.handle_one_request()
        while not self.close_connection and self._buffered():  # a pipelined request: serve it here
            self.server.set_deadline(self.connection, self.server.header_timeout)
            self.handle_one_request()
        self.keep_alive = not self.close_connection

    def _buffered(self) -> bool:
        """Whether bytes of a next request already wait (read without blocking)."""
        try:
            self.connection.setblocking(False)
            try:
                return bool(self.rfile.peek(1))  # type: ignore[attr-defined]
            finally:
                self.connection.settimeout(self.timeout)
        except OSError:
            self.close_connection = True
            return False

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self.server.set_deadline(self.connection, None)
        if self.request_version == "HTTP/0.9" or self.server.expired(self.connection):
            self.close_connection = True  # no status line to answer a 0.9 request with; a late one is cut off
            return False
        problem = self._framing_problem()
        if problem is not None:
            self.send_error(*problem)
            return False
        return True

    def _framing_problem(self) -> tuple[int, str] | None:
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get_all("Transfer-Encoding"):
            return 411, "send the body with a Content-Length (Transfer-Encoding is not supported)"
        if len(lengths) > 1:
            return 400, "more than one Content-Length header"
        if lengths and not _DIGITS.fullmatch(lengths[0].strip(" \t")):
            return 400, f"Content-Length {lengths[0][:20]!r} is not a whole number of bytes"
        if len(self.headers.get_all("Host") or []) > 1:
            return 400, "more than one Host header"
        if self.command not in ("POST", "PUT", "PATCH") and lengths and int(lengths[0]) > 0:
            self.close_connection = True  # a body nobody reads: the connection cannot carry another request
        return None

    # -- answers --------------------------------------------------------------------------------------------------

    def send_body(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode()
        self.send_body(status, body, "application/json; charset=utf-8", extra)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's error pages as JSON, closing the connection."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # an unparsable request line: answer with a status line all the same
        try:
            text = message or http.HTTPStatus(code).phrase
        except ValueError:
            text = f"error {code}"
        try:
            self.send_json(code, {"error": text})
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the app logs what matters; request lines and parse errors would only be noise

    # -- bodies ---------------------------------------------------------------------------------------------------

    def content_length(self, limit: int) -> int:
        """The announced body size (checked by `parse_request`), refused over `limit` before any byte is read."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise HTTPError(411, "the upload needs a Content-Length")
        size = int(length.strip(" \t"))
        if size > limit:
            raise HTTPError(413, f"the upload is {size / 2**20:.1f} MB, over the limit of {limit / 2**20:.1f} MB")
        return size

    def read_upload(self, size: int, out: BinaryIO) -> Upload:
        """Read the `size`-byte body into `out`: the raw bytes, or the one file part of a multipart/form-data body
        (its text fields in `Upload.fields`)."""
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
            self.wfile.flush()
        self.server.set_deadline(self.connection, self.server.header_timeout + size / MIN_UPLOAD_RATE)
        try:
            kind = self.headers.get_content_type()
            if kind == "multipart/form-data":
                boundary = self.headers.get_param("boundary")  # checked by the reader
                return MultipartReader(self._chunks(size), boundary, out).read()
            for chunk in self._chunks(size):
                out.write(chunk)
            return Upload(size)
        finally:
            self.server.set_deadline(self.connection, None)

    def _chunks(self, size: int):
        left = size
        while left:
            chunk = self.rfile.read1(min(left, CHUNK))
            if not chunk:
                self.close_connection = True
                if self.server.expired(self.connection):
                    raise HTTPError(408, f"the upload came too slowly (under {MIN_UPLOAD_RATE // 1000} kB/s)")
                raise ConnectionResetError("the client closed the connection during the upload")
            left -= len(chunk)
            yield chunk

    def handle_expect_100(self) -> bool:
        return True  # `read_upload` sends 100 Continue once the size and the route are accepted
