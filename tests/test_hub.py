"""Official-weights download: served from a local http.server (no external network), cached, checksum-verified."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading

import pytest

from fastinst import hub
from fastinst.errors import CheckpointError

PAYLOAD = b"fastinst test weights " * 1000


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(folder served on 127.0.0.1, its base URL); the cache goes to tmp_path/cache; weights_url points here."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "w.pth").write_bytes(PAYLOAD)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("FASTINST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "weights_url", lambda name: f"{base}/w.pth")
    yield root, base
    server.shutdown()
    server.server_close()


def test_download_writes_sidecar_and_caches(served, tmp_path):
    root, _ = served
    path = hub.official_weights("fastinst-d1-r50", progress=False)
    assert path == tmp_path / "cache" / "w.pth"
    assert path.read_bytes() == PAYLOAD
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert (tmp_path / "cache" / "w.pth.sha256").read_text().split()[0] == digest
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["w.pth", "w.pth.sha256"]  # no temp files
    (root / "w.pth").unlink()  # the server would now answer 404: the second call must use the cache
    assert hub.official_weights("fastinst-d1-r50", progress=False) == path


def test_known_checksum_mismatch_is_refused(served, tmp_path, monkeypatch):
    monkeypatch.setitem(hub.CHECKSUMS, "w.pth", "0" * 64)
    with pytest.raises(CheckpointError, match="SHA-256"):
        hub.official_weights("fastinst-d1-r50", progress=False)
    assert not (tmp_path / "cache" / "w.pth").exists()
    assert not any((tmp_path / "cache").iterdir())  # temp file removed too


def test_known_checksum_accepted(served, monkeypatch):
    monkeypatch.setitem(hub.CHECKSUMS, "w.pth", hashlib.sha256(PAYLOAD).hexdigest())
    assert hub.official_weights("fastinst-d1-r50", progress=False).read_bytes() == PAYLOAD


def test_changed_cached_file_is_refused(served):
    path = hub.official_weights("fastinst-d1-r50", progress=False)
    path.write_bytes(PAYLOAD[:100])  # e.g. truncated by a full disk
    with pytest.raises(CheckpointError, match="does not match"):
        hub.official_weights("fastinst-d1-r50", progress=False)


def test_http_error_names_url_and_workaround(served):
    _, base = served
    with pytest.raises(CheckpointError, match=r"could not download .*/missing\.pth: .*--weights PATH"):
        hub.fetch(f"{base}/missing.pth", progress=False)


def test_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTINST_CACHE", str(tmp_path))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/fastinst.pth"
    with pytest.raises(CheckpointError) as info:
        hub.fetch(url, progress=False)
    msg = str(info.value)
    assert msg.startswith(f"could not download {url}: ") and f"download it yourself from {url}" in msg
    assert not any(tmp_path.iterdir())


def test_cache_dir_and_urls(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTINST_CACHE", str(tmp_path))
    assert hub.cache_dir() == tmp_path
    monkeypatch.delenv("FASTINST_CACHE")
    assert hub.cache_dir().parts[-2:] == (".cache", "fastinst")
    assert hub.weights_url("fastinst-d1-r50").endswith("/fastinst_R50_ppm-fpn_x1_576_34.9.pth")
    with pytest.raises(CheckpointError, match="no official checkpoint"):
        hub.weights_url("fastinst-demo")
