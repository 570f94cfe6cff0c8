"""Writing files so that a reader never sees half of one: write to a temporary name beside it, then rename.

One temporary-name scheme for the whole package: `.<name>.<pid>.tmp` in the target's folder (same file system, so
the rename is atomic; the pid keeps two processes apart; the leading dot hides it). An exception while writing
removes the temporary file and leaves any previous file untouched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "temp_path", "write_json", "write_text"]


def temp_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """`with atomic_path(p) as tmp: write(tmp)` -> `p` appears complete, or not at all. `fsync` flushes the data to
    disk before the rename (for files whose loss would cost work, such as training checkpoints)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any, indent: int | None = None) -> Path:
    return write_text(path, json.dumps(obj, indent=indent))
