"""Video files, cameras and network streams read with PyAV: `VideoReader` (frame by frame, with timeouts and
one-line errors), `open_video` (a path or a camera / stream `LiveSource` -> its reader) and `video_frames`.

`Predictor.predict_video` / `stream` read through `open_video`; `fastinst predict` writes overlay videos from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FastInstError
from .sources import LiveSource, timeout_message


def open_video(source: Path | LiveSource | str, timeout: float | None = None) -> VideoReader:
    """Open a video file or a camera / stream `LiveSource` with PyAV (`VideoReader`); `timeout` (seconds) replaces
    the source's own (`STREAM_TIMEOUT` for URLs, none for cameras and files)."""
    if isinstance(source, LiveSource):
        limit = (float(timeout), float(timeout)) if timeout is not None else source.timeout
        return VideoReader(source.url, format=source.format, options=source.options, timeout=limit, name=source.name)
    limit = (float(timeout), float(timeout)) if timeout is not None else None
    return VideoReader(source, timeout=limit)


def _reason(e: BaseException) -> str:
    """An FFmpeg / OS error's own words, without the file name or URL it repeats (a URL may hold a password)."""
    text = str(getattr(e, "strerror", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class VideoReader:
    """A video file, camera device or network stream opened with PyAV, read frame by frame as frames arrive.

    `source` is what `av.open` takes (a path, `/dev/video0`, a URL); `format` forces a demuxer (`v4l2`,
    `avfoundation`, `dshow` for cameras), `options` are its options, `timeout` is PyAV's (open, read) timeout in
    seconds, `name` is what messages call the source (default `str(source)`, a URL's password hidden). Attributes:
    `rate` (frames per second, 25 when unknown), `frames` (the container's count, or None) and `ends` (whether the
    source has a known end: a file, or a URL whose duration or length FFmpeg knows; a camera, a device or a live
    stream has none). Iterating yields uint8 (H, W, 3) RGB frames, one decoded at a time (nothing is buffered beyond
    the decoder's own queue). A missing file or device, a refused connection, a source without a video stream and a
    decoding error raise `FastInstError` naming `name`; so does a stream that does not answer within the timeout (a
    server that accepts the connection and sends nothing, a UDP port nobody sends to, a stream that stops):
    `NAME: no data for N s (timeout)`, instead of what FFmpeg makes of the interruption ("Immediate exit requested",
    "Invalid data found when processing input").
    """

    def __init__(
        self,
        source: str | Path,
        *,
        format: str | None = None,
        options: dict[str, str] | None = None,
        timeout: float | tuple[float, float] | None = None,
        name: str | None = None,
    ):
        import time

        import av

        from .sources import redact_url

        self.name = name or redact_url(str(source))
        self.open_timeout, self.read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self._closed = False
        start = time.monotonic()
        try:
            self.container = av.open(str(source), format=format, options=options or {}, timeout=timeout)
        except (av.FFmpegError, OSError, ValueError) as e:
            waited = time.monotonic() - start
            if self._timed_out(e, waited, self.open_timeout):
                raise FastInstError(timeout_message(self.name, self.open_timeout or waited)) from None
            raise FastInstError(f"{self.name}: cannot open the video ({_reason(e)})") from None
        if not self.container.streams.video:
            self.close()
            raise FastInstError(f"{self.name}: has no video stream")
        stream = self.container.streams.video[0]
        self.rate = float(stream.average_rate or stream.guessed_rate or 25)
        self.frames: int | None = stream.frames or None
        self.ends = self._ends()

    def _ends(self) -> bool:
        """Whether FFmpeg knows where the source ends: its duration, or (outside playlists, whose size is the
        playlist's) its length in bytes, as a file or a recording served over HTTP with its length has."""
        container = self.container
        if container.duration is not None and container.duration > 0:
            return True
        if container.format.name in ("hls", "dash"):
            return False
        try:
            return int(container.size) > 0  # avio_size: < 0 for a live stream, a pipe, a device, RTSP
        except (AttributeError, TypeError, ValueError, OSError):
            return False

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in self.decoded():
            yield frame.to_ndarray(format="rgb24")

    def decoded(self) -> Iterator[Any]:
        """The decoded PyAV frames, before their conversion to RGB (`frame.to_ndarray(format="rgb24")`), which a
        live source's reader (`fastinst.engine.sources.FrameFeed`) leaves to the frames it does not drop."""
        import time

        import av

        asked = time.monotonic()  # when the next frame was asked for: the read timeout counts from there
        try:
            for frame in self.container.decode(video=0):
                yield frame
                asked = time.monotonic()
        except (av.FFmpegError, OSError) as e:
            waited = time.monotonic() - asked
            if self._timed_out(e, waited, self.read_timeout):
                raise FastInstError(timeout_message(self.name, self.read_timeout or waited)) from None
            raise FastInstError(f"{self.name}: cannot decode the video ({_reason(e)})") from None

    @staticmethod
    def _timed_out(e: BaseException, waited: float, limit: float | None) -> bool:
        """Whether PyAV's timeout ended the call that raised `e` after `waited` seconds, rather than the source: its
        interrupt callback makes FFmpeg return AVERROR_EXIT (`av.error.ExitError`, "Immediate exit requested",
        raised for nothing else here), or an error the demuxer makes of the cut-off input ("Invalid data found when
        processing input" from RTSP's probe) once the call has waited the whole timeout."""
        import av

        return isinstance(e, av.error.ExitError) or (limit is not None and waited >= limit)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """uint8 RGB frames of a video file (PyAV), decoded one at a time."""
    with VideoReader(path) as reader:
        yield from reader
