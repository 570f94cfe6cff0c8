"""Where `fastinst predict`'s images and frames come from: files, folders and globs (`collect_sources`), cameras and
network streams (`parse_source`, `LiveSource`), and reading a live source without blocking Ctrl-C (`FrameFeed`,
`StopSignals`). Torch-free, so that the command's parser can use it cheaply.
"""

from __future__ import annotations

import queue
import re
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..errors import FastInstError

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp")
STREAM_TIMEOUT = (20.0, 20.0)  # seconds PyAV waits to open a URL / for the next packet before giving up


@dataclass(frozen=True)
class LiveSource:
    """A camera or a network stream: what PyAV opens (`url`, `format`, `options`, `timeout`), what messages call it
    (`name`: the URL without its password) and the stem of its overlay video (`stem`)."""

    kind: str  # "camera" (an index), "device" (/dev/videoN) or "url"
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
    exists), a camera device (`/dev/video0` on Linux, `video=NAME` on Windows) or a stream URL (rtsp, rtsps, rtmp,
    rtmps, http, https, udp, tcp); None for a file, folder or glob. Any other `scheme://` is refused."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if match:
        scheme = match.group(1).lower()
        name = redact_url(text)
        if scheme not in STREAM_SCHEMES:
            raise FastInstError(f"{name}: unsupported URL scheme {scheme!r} (use {', '.join(STREAM_SCHEMES)})")
        return LiveSource("url", text, name, _url_stem(text), timeout=STREAM_TIMEOUT)
    if text.isascii() and text.isdigit() and not Path(text).exists():
        return camera_source(int(text), platform)
    if platform.startswith("linux") and re.fullmatch(r"/dev/video\d+", text):
        return LiveSource("device", text, text, Path(text).name, "v4l2")
    if platform in ("win32", "cygwin") and text.startswith("video="):
        return LiveSource("device", text, text, _safe_stem(text.removeprefix("video=")), "dshow")
    return None


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
    parts = urlsplit(url)
    last = parts.path.rstrip("/").rpartition("/")[2]
    return _safe_stem(Path(last).stem or parts.hostname or "stream")


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
# Stopping a live source
# ---------------------------------------------------------------------------------------------------------------------


class StopSignals:
    """While active, SIGINT (Ctrl-C) and SIGTERM end a live source cleanly instead of killing the run: the handler only
    keeps the signal's name in `received`, and the frame loop, which waits for frames in short slices
    (`FrameFeed.next`), stops and finishes the overlay. A second Ctrl-C interrupts at once (no overlay kept). Only
    the main thread can install handlers; elsewhere this does nothing (signals go to the main thread)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._saved: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the overlay
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


_END, _FAILED = object(), object()


class FrameFeed:
    """A live source's frames, decoded in a daemon thread into a queue of at most `depth` frames.

    PyAV's blocking reads do not return for Python signals, so a stalled stream would hold Ctrl-C until its read
    timeout; here the main thread only ever waits on the queue, in 0.1 s slices, and sees a stop at once. The thread
    closes the reader when it ends (at the source's end, on an error, or at the first frame after `close`)."""

    def __init__(self, reader, depth: int):
        self.reader = reader
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._read, name="fastinst-live-reader", daemon=True)
        self.thread.start()

    def _put(self, item: object) -> bool:
        while not self.closing.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        outcome: object = _FAILED  # what the main thread gets last: the end, the reader's error, or a failure
        try:
            with self.reader:
                for frame in self.reader:
                    if not self._put(frame):
                        return
            outcome = _END
        except (FastInstError, OSError, ValueError, RuntimeError, MemoryError) as e:
            outcome = e  # raised in the main thread
        finally:
            self._put(outcome)

    def next(self, stop: StopSignals) -> np.ndarray | None:
        """The next frame; None at the source's end or once a stop signal has arrived. Reader errors are raised."""
        while not stop.received:
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                return None
            if item is _FAILED:
                raise FastInstError(f"{self.reader.name}: the reading thread failed (see the traceback above)")
            if isinstance(item, BaseException):
                raise item
            return item
        return None

    def close(self) -> None:
        self.closing.set()
        self.thread.join(timeout=1.0)  # a read stalled in the network ends at its own timeout, in the thread
