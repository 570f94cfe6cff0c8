"""Request bodies of `fastinst app`: a streamed multipart/form-data reader (RFC 7578) and the error a request is
answered with.

* `MultipartReader(chunks, boundary, out).read()`: the one part with a filename goes to `out` as its bytes arrive
  (never held whole in memory), the other parts are small text fields; -> `Upload` (the file's size and name, the
  fields). A malformed body is an `HTTPError` 400 naming what is wrong.
* `HTTPError(status, message, headers)`: a request answered with `status` and `{"error": message}`.

The server, the strict request parsing and the handler that reads a body are `engine/serving.py`.
"""

from __future__ import annotations

import email.message
import email.parser
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

MAX_FIELD = 4096  # bytes of one multipart text field
MAX_PART_HEADERS = 8192  # bytes of one multipart part's headers
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")  # RFC 2046 bchars


class HTTPError(Exception):
    """A request answered with `status` and `{"error": message}`; `headers` are added (Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class Upload:
    """What `read_upload` got: the file's size and name (the multipart part's filename) and the text fields."""

    size: int = 0
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


class MultipartReader:
    """A streamed multipart/form-data parser (RFC 7578): the one part with a filename goes to `out` as it arrives,
    other parts are text fields of at most `MAX_FIELD` bytes; a body that does not end with its closing boundary, a
    second file or an oversized field or header block is a 400."""

    def __init__(self, chunks: Iterable[bytes], boundary: object, out: BinaryIO):
        """`chunks`: the body's bytes as they arrive; `boundary`: the Content-Type's `boundary` parameter (checked
        here: 1-70 of RFC 2046's characters); `out`: where the file part goes."""
        if not isinstance(boundary, str) or not _BOUNDARY.fullmatch(boundary):
            raise HTTPError(400, "multipart/form-data needs a boundary of 1-70 allowed characters")
        self.chunks = iter(chunks)
        self.delimiter = b"\r\n--" + boundary.encode("ascii")
        self.out = out
        self.buf = b"\r\n"  # so the first boundary matches the delimiter like the others
        self.upload = Upload()
        self.done = False

    def _more(self) -> bool:
        chunk = next(self.chunks, None)
        if chunk is None:
            return False
        self.buf += chunk
        return True

    def read(self) -> Upload:
        start = self._find(self.delimiter, 1024)  # a short preamble is allowed
        self.buf = self.buf[start + len(self.delimiter) :]
        while True:
            while len(self.buf) < 2 and self._more():
                pass
            if self.buf.startswith(b"--"):
                break  # the closing boundary; anything after it (an epilogue) is ignored
            end = self._find(b"\r\n", 256)  # transport padding, then CRLF
            if self.buf[:end].strip(b" \t"):
                raise HTTPError(400, "multipart body: a boundary line has extra characters")
            self.buf = self.buf[end + 2 :]
            end = self._find(b"\r\n\r\n", MAX_PART_HEADERS, also_empty=True)
            headers = self.buf[:end]
            self.buf = self.buf[end + (4 if end else 2) :]
            self._part(headers)
        if self.upload.filename is None:
            raise HTTPError(400, "multipart body has no file part (send the image as a form field with a filename)")
        return self.upload

    def _find(self, token: bytes, limit: int, also_empty: bool = False) -> int:
        """Index of `token` in the buffer, reading more as needed; `also_empty`: a header block may be empty."""
        while True:
            if also_empty and self.buf.startswith(b"\r\n"):
                return 0
            at = self.buf.find(token)
            if 0 <= at <= limit:
                return at
            if len(self.buf) > limit + len(token) or not self._more():
                raise HTTPError(400, "multipart body is malformed (a boundary or part header is missing or too long)")

    def _part(self, raw: bytes) -> None:
        headers = email.parser.HeaderParser().parsestr(raw.decode("utf-8", "replace") + "\r\n\r\n")
        disposition = headers.get("Content-Disposition", "")
        holder = email.message.Message()
        holder["Content-Disposition"] = disposition
        name = holder.get_param("name", header="content-disposition")
        filename = holder.get_filename()
        if not disposition.lower().startswith("form-data") or not isinstance(name, str):
            raise HTTPError(400, "multipart body: each part needs Content-Disposition: form-data; name=...")
        if filename is not None:
            if self.upload.filename is not None:
                raise HTTPError(400, "multipart body has more than one file; send one image per request")
            self.upload.filename = filename or "image"
            self.upload.size = self._content(self.out.write, None)
            return
        value = bytearray()
        self._content(value.extend, MAX_FIELD)
        self.upload.fields[name] = value.decode("utf-8", "replace")

    def _content(self, sink: Callable[[bytes], Any], limit: int | None) -> int:
        """Move the part's content (up to the next delimiter) into `sink` -> its size."""
        size = 0
        keep = len(self.delimiter) - 1
        while True:
            at = self.buf.find(self.delimiter)
            piece = self.buf[:at] if at >= 0 else self.buf[: max(0, len(self.buf) - keep)]
            size += len(piece)
            if limit is not None and size > limit:
                raise HTTPError(400, f"multipart body: a text field is over {limit} bytes")
            if piece:
                sink(piece)
            self.buf = self.buf[len(piece) :]
            if at >= 0:
                self.buf = self.buf[len(self.delimiter) :]
                return size
            if not self._more():
                raise HTTPError(400, "multipart body ended before its closing boundary")
