"""Where `fastinst predict`'s images and frames come from: files, folders and globs (`collect_sources`), cameras,
network streams and image URLs (`parse_source`, `LiveSource`, `fetch_image`), and reading a video or live source in
numbered batches (`FrameBatches`): every frame in order, or, for a live source the model cannot keep up with, always the
newest frames (the others dropped and counted), in a thread that never blocks Ctrl-C (`FrameFeed`, `StopSignals`).
Torch-free, so that the command's parser can use it cheaply.
"""

from __future__ import annotations

import base64
import collections
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np

from ..errors import FastInstError
from .signals import StopSignals as StopSignals  # re-exported: the one stop-signal handler (engine/signals.py)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp")
STREAM_TIMEOUT = (10.0, 10.0)  # seconds to wait for a URL to open / for its next data before giving up
IMAGE_URL_SCHEMES = ("http", "https")  # an image URL (`.jpg`, `.png`...) over these is downloaded, not streamed
MAX_IMAGE_DOWNLOAD = 512 * 1024 * 1024  # bytes: an image URL sending more is refused


def timeout_message(name: str, seconds: float) -> str:
    """What a source that stopped sending is told, in our words (not FFmpeg's "Immediate exit requested")."""
    return f"{name}: no data for {seconds:g} s (timeout)"


@dataclass(frozen=True)
class LiveSource:
    """A camera, a network stream or an image URL: what PyAV (or, for an image, the download) opens (`url`,
    `format`, `options`, `timeout`), what messages call it (`name`: the URL without its password) and the stem of its
    overlay (`stem`)."""

    kind: str  # "camera" (an index), "device" (/dev/videoN), "url" (a stream) or "image" (an http(s) image URL)
    url: str
    name: str
    stem: str
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    timeout: tuple[float, float] | None = None


def camera_source(index: int, platform: str = sys.platform) -> LiveSource:
    """Camera `index` on this system: v4l2 `/dev/video<index>` on Linux, AVFoundation device `<index>` on macOS.
    DirectShow (Windows) opens cameras by name, so there an index is refused with the way to name the camera."""
    if platform.startswith("linux"):
        device = f"/dev/video{index}"
        return LiveSource("camera", device, f"camera {index} ({device})", f"camera{index}", "v4l2")
    if platform == "darwin":  # AVFoundation's default 29.97 fps is refused by many cameras; 30 is what they offer
        return LiveSource(
            "camera", str(index), f"camera {index}", f"camera{index}", "avfoundation", {"framerate": "30"}
        )
    if platform in ("win32", "cygwin"):
        raise FastInstError(
            f"camera {index}: DirectShow opens cameras by name; pass SOURCE 'video=NAME' (`ffmpeg -list_devices "
            "true -f dshow -i dummy` lists the names)"
        )
    raise FastInstError(f"camera {index}: no camera input known for platform {platform!r}; pass a device or URL")


def parse_source(text: str, platform: str = sys.platform) -> LiveSource | None:
    """What kind of SOURCE `text` is: a `LiveSource` for a camera index (`0`, when no file or folder of that name
    exists), a camera device (`/dev/video0` on Linux, `video=NAME` on Windows), an image URL (http or https, its path
    ending in an image extension: `https://host/a.jpg?x=1`) or a stream URL (rtsp, rtsps, rtmp, rtmps, http, https,
    udp, tcp); None for a file, folder or glob. Any other `scheme://` is refused."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if match:
        scheme = match.group(1).lower()
        name = redact_url(text)
        if scheme not in STREAM_SCHEMES:
            raise FastInstError(f"{name}: unsupported URL scheme {scheme!r} (use {', '.join(STREAM_SCHEMES)})")
        if scheme in IMAGE_URL_SCHEMES and _is_image_name(_url_path(text)):
            return LiveSource("image", text, name, _url_stem(text), timeout=STREAM_TIMEOUT)
        return LiveSource("url", text, name, _url_stem(text), timeout=STREAM_TIMEOUT)
    if text.isascii() and text.isdigit() and not Path(text).exists():
        return camera_source(int(text), platform)
    if platform.startswith("linux") and re.fullmatch(r"/dev/video\d+", text):
        return LiveSource("device", text, text, Path(text).name, "v4l2")
    if platform in ("win32", "cygwin") and text.startswith("video="):
        return LiveSource("device", text, text, _safe_stem(text.removeprefix("video=")), "dshow")
    return None


def _is_image_name(name: str) -> bool:
    from ..data.images import is_image_file

    return is_image_file(name)


def _url_path(url: str) -> str:
    try:
        return unquote(urlsplit(url).path)
    except ValueError:
        return ""


def redact_url(url: str) -> str:
    """The URL with its password (`user:secret@host`) replaced by `***`, for messages and JSON."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _url_stem(url: str) -> str:
    """A file stem for a stream's overlay: the last path component's stem, else the host (`rtsp://cam/live/1` -> 1)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "stream"
    last = unquote(parts.path).rstrip("/").rpartition("/")[2]
    return _safe_stem(Path(last).stem or host or "stream")


def _safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "stream"


def collect_sources(sources: list[str]) -> tuple[list[tuple[Path, bool]], list[LiveSource]]:
    """SOURCE arguments -> ([(file, lenient)], [live sources]): files found in folders/globs are lenient (skipped when
    unreadable); cameras and URLs (`parse_source`) are read live."""
    from ..data.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_images

    media = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    out: list[tuple[Path, bool]] = []
    live: list[LiveSource] = []
    for source in sources:
        stream = parse_source(source)
        if stream is not None:
            live.append(stream)
            continue
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
    return out, live


# ---------------------------------------------------------------------------------------------------------------------
# Images by URL
# ---------------------------------------------------------------------------------------------------------------------


def fetch_image(
    url: str | LiveSource, timeout: float | tuple[float, float] | None = None, limit: int = MAX_IMAGE_DOWNLOAD
) -> np.ndarray:
    """Download an http(s) image URL and decode it as `fastinst.data.images.read_image` decodes a file (EXIF
    orientation, every mode to 8-bit RGB, the pixel limit) -> uint8 (H, W, 3) RGB.

    `timeout`: seconds to wait to connect and then for each piece of data (default `STREAM_TIMEOUT`); a password in
    the URL (`https://user:pw@host/a.jpg`) is sent as HTTP basic authentication and never shown. Every failure is a
    one-line `FastInstError` naming the URL: `NAME: no data for N s (timeout)`, `NAME: HTTP 404 Not Found`,
    `NAME: cannot download (reason)`, or the decoder's message with the URL in place of the file."""
    import urllib.error
    import urllib.request

    from ..data.images import read_image

    source = url if isinstance(url, LiveSource) else LiveSource("image", url, redact_url(url), _url_stem(url))
    name = source.name
    limit_s = timeout if timeout is not None else (source.timeout or STREAM_TIMEOUT)
    wait = float(max(limit_s) if isinstance(limit_s, tuple) else limit_s)
    request = _request(source.url, name)
    suffix = Path(_url_path(source.url)).suffix.lower()
    fd, tmp = tempfile.mkstemp(prefix="fastinst-url-", suffix=suffix if _is_image_name(f"x{suffix}") else ".img")
    try:
        try:
            with urllib.request.urlopen(request, timeout=wait) as response, os.fdopen(fd, "wb") as out:
                fd = -1  # owned by `out` now
                got = 0
                while chunk := response.read(1 << 20):
                    got += len(chunk)
                    if got > limit:
                        raise FastInstError(f"{name}: the download is over {limit / 2**20:.0f} MiB; not read")
                    out.write(chunk)
        except urllib.error.HTTPError as e:
            raise FastInstError(f"{name}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise FastInstError(timeout_message(name, wait)) from None
            raise FastInstError(f"{name}: cannot download ({_words(e.reason)})") from None
        except TimeoutError:
            raise FastInstError(timeout_message(name, wait)) from None
        except (OSError, ValueError) as e:  # a connection reset mid-body, a malformed URL or response
            raise FastInstError(f"{name}: cannot download ({_words(e)})") from None
        try:
            return read_image(tmp)
        except FastInstError as e:
            raise FastInstError(str(e).replace(tmp, name)) from None
    finally:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)


def _request(url: str, name: str):
    """A urllib request for `url`: its `user:password@` (which urllib cannot take in the host) as basic auth."""
    import urllib.request

    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError as e:
        raise FastInstError(f"{name}: not a valid URL ({e})") from None
    headers = {"User-Agent": "fastinst"}
    if user is not None or password is not None:
        token = base64.b64encode(f"{unquote(user or '')}:{unquote(password or '')}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return urllib.request.Request(url, headers=headers)


def _words(reason: object) -> str:
    """An OS / network error's own words on one line (`[Errno 111] Connection refused` -> `Connection refused`)."""
    text = str(getattr(reason, "strerror", None) or reason).strip()
    return text.splitlines()[0] if text else type(reason).__name__


# ---------------------------------------------------------------------------------------------------------------------
# Stopping a live source
# ---------------------------------------------------------------------------------------------------------------------


class _Stop(Protocol):
    received: str | None


class _NeverStop:
    """The stop of a feed no signal handler feeds (the Python API: the caller stops by leaving the loop)."""

    received: str | None = None


_END, _FAILED = object(), object()


class FrameFeed:
    """A reader's frames, decoded in a daemon thread and numbered in source order, `depth` at most held at a time.

    * `drop=False` (every frame): the thread waits while `depth` frames are held, so every frame is handed over,
      in order; a source faster than the model then waits in its own buffers (a live source falls behind).
    * `drop=True` (live): the thread never waits; when `depth` frames are held, the oldest is dropped (counted in
      `dropped`) to make room, so what the caller takes is at most `depth` frames older than the newest one decoded:
      the latency stays bounded however slow the model is.

    PyAV's blocking reads do not return for Python signals, so a stalled stream would hold Ctrl-C until its read
    timeout; here the main thread only ever waits on the feed, in 0.1 s slices, and sees a stop at once. The thread
    closes the reader when it ends (at the source's end, on an error, or at the first frame after `close`).
    Counters: `read` (frames decoded), `dropped`. In drop mode a reader with `decoded()` (`VideoReader`: PyAV's frames
    before their RGB conversion) is read through it, and only the frames taken are converted (`to_ndarray`), so the
    frames dropped cost their decoding only."""

    def __init__(self, reader, depth: int, drop: bool = False):
        self.reader = reader
        self.depth, self.drop = max(1, depth), drop
        self.held: collections.deque[tuple[int, Any]] = collections.deque()  # RGB arrays, or frames to convert
        self.read = self.dropped = 0
        self.outcome: object = None  # set once by the thread: _END, _FAILED or the reader's error
        self.changed = threading.Condition()
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._read, name="fastinst-live-reader", daemon=True)
        self.thread.start()

    def _put(self, frame: Any) -> bool:
        with self.changed:
            while not self.drop and len(self.held) >= self.depth and not self.closing.is_set():
                self.changed.wait(0.1)
            if self.closing.is_set():
                return False
            if len(self.held) >= self.depth:  # drop: the oldest frame held makes room for the newest
                self.held.popleft()
                self.dropped += 1
            self.held.append((self.read, frame))
            self.read += 1
            self.changed.notify_all()
            return True

    def _read(self) -> None:
        outcome: object = _FAILED  # what the main thread gets last: the end, the reader's error, or a failure
        try:
            with self.reader:
                decoded = getattr(self.reader, "decoded", None)
                for frame in decoded() if self.drop and decoded is not None else self.reader:
                    if not self._put(frame):
                        return
            outcome = _END
        except (FastInstError, OSError, ValueError, RuntimeError, MemoryError) as e:
            outcome = e  # raised in the main thread
        finally:
            with self.changed:
                self.outcome = outcome
                self.changed.notify_all()

    def take(self, count: int = 1, stop: _Stop | None = None) -> list[tuple[int, np.ndarray]]:
        """The next (frame index, frame) pairs, oldest first: waits for the first; in drop mode returns the frames
        held (at most `count`) at once, otherwise waits until it has `count` or the source ended. [] at the source's
        end or once a stop signal has arrived; a reader error is raised once the frames before it are taken."""
        stop = stop or _NeverStop()
        want = max(1, count)
        with self.changed:
            while not stop.received:
                ready = len(self.held) >= (1 if self.drop else want)
                if ready or (self.held and self.outcome is not None):
                    got = [self.held.popleft() for _ in range(min(want, len(self.held)))]
                    self.changed.notify_all()  # room for the thread again
                    break
                if self.outcome is not None:
                    got = []
                    break
                self.changed.wait(0.1)
            else:
                return []  # stopped
            outcome = self.outcome
        if got:
            return [(i, f if isinstance(f, np.ndarray) else f.to_ndarray(format="rgb24")) for i, f in got]
        if outcome is _END or outcome is None:
            return []
        if outcome is _FAILED:
            raise FastInstError(f"{self.reader.name}: the reading thread failed (see the traceback above)")
        assert isinstance(outcome, BaseException)
        raise outcome

    def next(self, stop: _Stop | None = None) -> np.ndarray | None:
        """The next frame; None at the source's end or once a stop signal has arrived. Reader errors are raised."""
        got = self.take(1, stop)
        return got[0][1] if got else None

    def close(self) -> None:
        with self.changed:
            self.closing.set()
            self.changed.notify_all()
        self.thread.join(timeout=1.0)  # a read stalled in the network ends at its own timeout, in the thread


class FrameBatches:
    """An opened reader's frames as numbered batches `[(frame index, RGB frame)]`, at most `batch_size` each and
    `max_frames` in all: `for batch in FrameBatches(reader, 4): ...`.

    * `drop=False`, `threaded=False` (a video file): decoded in the caller's thread, one batch at a time, every
      frame (nothing is read before the first batch is asked for).
    * `threaded=True` (cameras, streams): read in a `FrameFeed` thread; with `stop` (a `StopSignals`), Ctrl-C and
      SIGTERM end the batches cleanly (`stop.received` says which).
    * `drop=True` (live, implies threaded): always the newest frames; those the caller was too slow for are dropped
      and counted (`dropped`), and the indices of the batches have gaps there.

    After (or during) the loop: `read` (frames decoded), `dropped`, `taken` (frames handed out). The reader is closed
    when the loop ends, however it ends (`close()` ends it early)."""

    def __init__(
        self,
        reader,
        batch_size: int = 1,
        *,
        drop: bool = False,
        threaded: bool = False,
        stop: _Stop | None = None,
        max_frames: int | None = None,
    ):
        self.reader, self.batch_size = reader, max(1, batch_size)
        self.drop, self.threaded = drop, threaded or drop
        self.stop, self.max_frames = stop, max_frames
        self.taken = 0
        self._read = 0
        self.feed: FrameFeed | None = None

    @property
    def read(self) -> int:
        return self.feed.read if self.feed is not None else self._read

    @property
    def dropped(self) -> int:
        return self.feed.dropped if self.feed is not None else 0

    def _room(self) -> int:
        return self.batch_size if self.max_frames is None else min(self.batch_size, self.max_frames - self.taken)

    def __iter__(self) -> Iterator[list[tuple[int, np.ndarray]]]:
        return self._threaded() if self.threaded else self._in_order()

    def _in_order(self) -> Iterator[list[tuple[int, np.ndarray]]]:
        batch: list[tuple[int, np.ndarray]] = []
        with self.reader:
            frames = iter(self.reader)
            while self._room() > 0:
                frame = next(frames, None)
                if frame is None:
                    break
                batch.append((self._read, frame))
                self._read += 1
                if len(batch) == self._room():
                    self.taken += len(batch)
                    yield batch
                    batch = []
            if batch:
                self.taken += len(batch)
                yield batch

    def _threaded(self) -> Iterator[list[tuple[int, np.ndarray]]]:
        self.feed = FrameFeed(self.reader, self.batch_size, drop=self.drop)
        try:
            while (room := self._room()) > 0:
                batch = self.feed.take(room, self.stop)
                if not batch:
                    return
                self.taken += len(batch)
                yield batch
        finally:
            self.feed.close()

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
        else:
            self.reader.close()
