"""Writers for what inference produces: overlay images, COCO results JSON (whole, or streamed entry by entry), overlay
videos. Each file appears under its final name only once complete (`fastinst.files.atomic_path` / `temp_path`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

import numpy as np

from ..errors import FastInstError
from ..files import atomic_path, temp_path, write_json

if TYPE_CHECKING:
    from av.video.stream import VideoStream

__all__ = ["JsonListWriter", "VideoWriter", "save_image", "write_json"]


def save_image(image: np.ndarray, path: str | Path) -> Path:
    """uint8 (H, W, 3) RGB -> an image file, format from the suffix (PNG when unknown)."""
    from PIL import Image

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=fmt)
    return path


class _Completed:
    """A writer used as a context manager: `close()` (the file appears complete) when the block ends normally,
    `abort()` (the temporary file removed, an earlier file left as it was) when it raises."""

    def close(self) -> Path | None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class JsonListWriter(_Completed):
    """A JSON list written item by item, so that memory stays flat however many items a long stream makes:
    `with JsonListWriter(path) as w: w.add(entries)`.

    The items go to the temporary name (`.NAME.<pid>.tmp` beside `path`), one a line, and the file there is a
    complete JSON list after every `add` (the closing bracket is rewritten after the new items, and the file
    flushed): a process killed mid-stream leaves a readable list there. `close()` renames it to `path` (replacing an
    earlier file of that name only then, in one step); `abort()` (or an exception in the `with` block) removes it
    and leaves `path` as it was. `count` is the number of items written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = temp_path(self.path)
        self.count = 0
        self.file: IO[bytes] = open(self.tmp, "wb")  # closed by close() / abort()
        self.file.write(b"[\n]\n")
        self.end = 2  # where the closing bracket starts
        self.file.flush()

    def add(self, items: Iterable[Any]) -> None:
        parts = []
        for item in items:
            parts.append((b",\n" if self.count else b"") + json.dumps(item).encode("utf-8"))
            self.count += 1
        if not parts:
            return
        self.file.seek(self.end)
        self.file.write(b"".join(parts))
        self.end = self.file.tell()
        self.file.write(b"\n]\n")
        self.file.flush()

    def close(self) -> Path:
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class VideoWriter(_Completed):
    """RGB frames -> an H.264 (or MPEG-4 part 2) MP4 via PyAV, under a temporary name until `close()`.

    `with VideoWriter(path, fps) as w: w.write(frame)` closes on success and removes the partial file on error.
    """

    def __init__(self, path: str | Path, fps: float):
        try:
            import av
        except ImportError:
            raise FastInstError("writing videos needs PyAV: pip install 'fastinst[video]'") from None
        self.path = Path(path)
        self.tmp = temp_path(self.path)
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        self.rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        self.stream: VideoStream | None = None
        self.frames = 0
        self.pts = -1  # the last frame's time, in frames of 1 / rate

    def _open(self, h: int, w: int) -> VideoStream:
        import av

        for codec in ("libx264", "mpeg4"):
            try:
                av.codec.Codec(codec, "w")
            except (av.FFmpegError, ValueError):
                continue
            # x264's default lookahead holds ~50 frames (+380 MiB at 1080p): zerolatency encodes each frame as it
            # comes, so memory stays flat from the first frames (benchmarks/predict_memory.py --video-frames)
            options = {"tune": "zerolatency"} if codec == "libx264" else {}
            stream = self.container.add_stream(codec, rate=self.rate, options=options)
            break
        else:
            raise FastInstError("PyAV has no H.264 or MPEG-4 encoder; cannot write overlay videos")
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        self.stream = stream
        return stream

    def write(self, frame: np.ndarray, index: int | None = None) -> None:
        """Add `frame`, shown at time `index / fps` (`index`: the frame's number in its source; default: the one
        after the last). Indices with gaps (the frames a live source dropped) make a video that keeps the source's
        timing, each overlay held until the next; an index not after the last one's is moved after it."""
        import av

        h, w = frame.shape[:2]
        if h % 2 or w % 2:  # yuv420p needs even sizes: repeat the last row / column
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        stream = self.stream if self.stream is not None else self._open(*frame.shape[:2])
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        self.pts = self.pts + 1 if index is None or index <= self.pts else int(index)
        picture.pts, picture.time_base = self.pts, 1 / self.rate
        for packet in stream.encode(picture):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()
        if self.frames:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        try:
            self.container.close()
        finally:
            self.tmp.unlink(missing_ok=True)
