"""Writing files so that a reader never sees half of one: write to a temporary name beside it, then rename.

One temporary-name scheme for the whole package: `.<name>.<pid>.tmp` in the target's folder (same file system, so
the rename is atomic; the pid keeps two processes apart; the leading dot hides it). An exception while writing
removes the temporary file and leaves any previous file untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from .errors import FastInstError

__all__ = ["atomic_path", "check_output", "temp_path", "write_json", "write_text"]


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


def check_output(
    path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), kind: Literal["dir", "file"] = "dir"
) -> Path:
    """The one guard every command runs on where it will write, before any work: -> `path` as a `Path`, or a
    `FastInstError` naming it and the problem.

    Refused: an output that is one of `inputs` (or, for `kind="file"`, an existing folder; for `kind="dir"`, an
    existing file); a file output whose folder is an existing file; a place that cannot be written (the nearest
    existing folder is checked with `os.access`). `inputs` may be files or folders; an output folder that holds input
    files is allowed (commands must then never write onto an input's path: see `same_file`).
    """
    out = Path(path)
    for item in inputs:
        if same_file(out, item):
            raise FastInstError(f"{out}: --output is also an input; choose another path so the input is not replaced")
    if kind == "dir":
        if out.exists() and not out.is_dir():
            raise FastInstError(f"{out}: --output must be a folder, but this is an existing file")
    else:
        if out.is_dir():
            raise FastInstError(f"{out}: --output must be a file path, but this is an existing folder")
        if out.name == "" or out.name in (".", ".."):
            raise FastInstError(f"{out}: --output must name a file")
    folder = out if kind == "dir" else out.parent
    existing = folder if str(folder) else Path(".")
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise FastInstError(f"{out}: cannot write here: {existing} is a file, not a folder")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise FastInstError(f"{out}: cannot write here: no permission to write in {existing}")
    if existing.is_dir():  # permission bits do not tell everything (root, read-only mounts, /proc): try it
        try:
            fd, probe = tempfile.mkstemp(prefix=".fastinst-probe-", dir=existing)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise FastInstError(f"{out}: cannot write here: {(e.strerror or str(e)).lower()} in {existing}") from None
    if kind == "file" and out.exists() and not os.access(out, os.W_OK):
        raise FastInstError(f"{out}: cannot write here: the file is read-only")
    return out


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file or folder (symlinks and `..` resolved; a missing path compares by its
    resolved name)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def cache_dir() -> Path:
    """fastinst's per-user cache (downloaded weights, images labelme files only embed): `$FASTINST_CACHE` or
    `~/.cache/fastinst`."""
    env = os.environ.get("FASTINST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastinst"
