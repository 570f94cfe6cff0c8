"""Official checkpoint download by variant name, cached and checksum-verified.

    path = fastinst.hub.official_weights("fastinst-d1-r50")   # ~/.cache/fastinst/fastinst_R50_ppm-fpn_x1_576_34.9.pth

* The URL is the variant's `weights_url` in `fastinst.config` (the official GitHub release).
* Files are cached in `$FASTINST_CACHE`, or `~/.cache/fastinst` when it is unset.
* A download goes to a temporary name in the cache folder and is renamed only once it is complete (and verified), so
  an interrupted download never leaves a file that looks finished.
* Integrity: `CHECKSUMS` maps a release file name to its SHA-256. The official release publishes no checksums and we
  could not compute them offline, so it is empty; a known entry is checked before the file is accepted. Whatever the
  source, the SHA-256 of the accepted file is written next to it as `<file>.sha256` (trust on first use) and every
  later use re-hashes the cached file and refuses it if it changed (truncated copy, disk corruption, replaced file).
* Offline or failing downloads raise `CheckpointError` telling the user where to get the file by hand.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from .errors import CheckpointError
from .files import cache_dir, temp_path, write_text

CHECKSUMS: dict[str, str] = {}
"""Release file name -> expected SHA-256 (hex). Empty: the official release does not publish checksums."""

_CHUNK = 1 << 20


def weights_url(name: str) -> str:
    """The official release URL of a variant (name, alias or release file name)."""
    from .config import get_config

    cfg = get_config(name)
    if not cfg.weights_url:
        raise CheckpointError(
            f"{cfg.name} has no official checkpoint; train it (fastinst train) and pass --weights PATH"
        )
    return cfg.weights_url


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify_cached(path: Path, expected: str | None = None) -> None:
    """Check a cached file against `expected` (or its `.sha256` sidecar); write the sidecar if there is none."""
    actual = sha256_file(path)
    sidecar = _sidecar(path)
    words = sidecar.read_text().split() if sidecar.is_file() else []
    recorded = expected or (words[0] if words else None)
    if recorded and actual != recorded.lower():
        raise CheckpointError(
            f"{path}: SHA-256 {actual[:16]}... does not match the expected {recorded[:16]}... "
            "(corrupt or replaced file); delete it to download it again"
        )
    if expected or not words:
        write_text(sidecar, f"{actual}  {path.name}\n")


def download(url: str, dest: Path, expected: str | None = None, progress: bool = True, timeout: float = 30.0) -> Path:
    """Fetch `url` into `dest` through a temporary file; verify `expected` SHA-256 if given; write the sidecar."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    hint = f"download it yourself from {url} and pass --weights PATH"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            bar = _progress(total, dest.name) if progress else None
            received = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        if total and received != total:
            raise OSError(f"connection closed after {received} of {total} bytes")
        if received == 0:
            raise OSError("the server sent an empty file")
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(f"could not download {url}: {reason}; {hint}") from None
    actual = digest.hexdigest()
    if expected and actual != expected.lower():
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"downloaded {url} has SHA-256 {actual[:16]}..., expected {expected[:16]}...; "
            f"refusing it (corrupt or tampered). {hint[0].upper()}{hint[1:]}"
        )
    write_text(_sidecar(dest), f"{actual}  {dest.name}\n")
    os.replace(tmp, dest)
    return dest


def _progress(total: int, label: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {label}")


def fetch(url: str, sha256: str | None = None, progress: bool = True) -> Path:
    """The cached copy of `url` (downloaded on first use), verified against `sha256`/`CHECKSUMS`/its sidecar."""
    filename = Path(urlparse(url).path).name
    if not filename:
        raise CheckpointError(f"{url}: cannot tell the file name from the URL")
    dest = cache_dir() / filename
    expected = sha256 or CHECKSUMS.get(filename)
    if dest.is_file():
        verify_cached(dest, expected)
        return dest
    return download(url, dest, expected, progress)


def official_weights(name: str, progress: bool = True) -> Path:
    """Path to the official checkpoint of a variant, downloading it into the cache on first use."""
    return fetch(weights_url(name), progress=progress)
