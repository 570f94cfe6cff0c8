"""`fastinst app` under real use: memory with a huge image, many clients at once, idle and half-sent connections,
strict HTTP parsing, multipart uploads, downloads that merge and expire, a model that cannot be loaded, a thin image,
and a seeded fuzz of HTTP requests.

The server runs the tiny `fastinst-demo` variant with random weights (the shared `demo_weights` checkpoint), in a
thread, or in its own process where its peak memory is measured.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode

import numpy as np
import pytest
from PIL import Image

from fastinst.data.synthetic import render_sample
from fastinst.engine import compact
from fastinst.engine.app import Server, png_bytes, serve
from fastinst.engine.app_state import App, Choice
from fastinst.engine.predictor import Predictor
from fastinst.errors import CheckpointError
from fastinst.factory import load_model

REPO = Path(__file__).resolve().parents[2]
BYTES_PER_PIXEL = 16  # docs/app.md: one request adds at most this much to the server's memory at rest, per pixel


def photo(index: int = 0, size: int = 96) -> np.ndarray:
    return render_sample(7, "val", index, size)[0]


class Running:
    """An App served on a thread; `url` is its base URL (no trailing /), `logs` what it logged."""

    def __init__(self, app: App, **options):
        self.app = app
        self.logs: list[str] = []
        app.log = self.logs.append
        started = threading.Event()
        self.server: Server | None = None

        def ready(server: Server) -> None:
            self.server = server
            started.set()

        self.thread = threading.Thread(target=serve, args=(app, "127.0.0.1", 0, ready), kwargs=options, daemon=True)
        self.thread.start()
        assert started.wait(30)
        assert self.server is not None
        self.port = int(self.server.server_address[1])
        self.url = self.server.url.rstrip("/")

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture(scope="module")
def predictor(demo_weights):
    return Predictor(load_model("fastinst-demo", demo_weights, "cpu"), dtype="fp32")


def make_app(predictor, demo_weights, **kwargs) -> App:
    choices = [Choice("fastinst-demo", demo_weights, "demo.pth"), Choice("fastinst-d1-r50", "official", "d1 official")]
    options = {"device": "cpu", "dtype": "fp32", "score_threshold": 0.0, "loaded": predictor, **kwargs}
    return App(choices, **options)


@pytest.fixture(scope="module")
def running(predictor, demo_weights):
    r = Running(make_app(predictor, demo_weights))
    yield r
    r.stop()


def request(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 120):
    """-> (status, headers, body); an HTTP error status is returned, not raised."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def predict(base: str, data: bytes, name: str = "photo.png", **query) -> tuple[int, dict]:
    q = urlencode({"model": 0, "threshold": 0.0, "name": name, **query})
    status, _, body = request(f"{base}/api/predict?{q}", data, {"Content-Type": "application/octet-stream"})
    return status, json.loads(body)


def raw_exchange(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send `data` on a new connection, close our sending side, read until the server closes -> what it sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        out = b""
        try:
            while chunk := sock.recv(1 << 16):
                out += chunk
        except OSError:  # a reset counts as a closed connection
            pass
    return out


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]], boundary: str = "fastinst-test") -> bytes:
    """A multipart/form-data body as curl -F writes it."""
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for field, filename, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def post_raw(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return raw_exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def status_of(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.startswith(b"{") else {}


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_38_megapixel_upload_at_threshold_0_stays_under_the_documented_bound(demo_weights, tmp_path):
    """A 7200x5400 JPEG (38.9 MP, under the default --max-megapixels 40) at threshold 0 through `fastinst app` in its
    own process: every instance comes back, the overlay and COCO JSON are complete, and the process's peak RSS
    (VmHWM) exceeds its RSS at rest by under BYTES_PER_PIXEL a pixel (before: 0.75 -> 10.5 GB, 250 bytes a pixel)."""
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (54, 72, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((7200, 5400), Image.Resampling.BILINEAR))
    data = jpeg(big)
    del big
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "fastinst", "app", "--model", "fastinst-demo", "--weights", demo_weights]
    cmd += ["--port", "0", "--device", "cpu", "--dtype", "fp32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        while url is None:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if m := re.search(r"open (http://\S+)", line):
                url = m[1].rstrip("/")
        assert request(url + "/api/info")[0] == 200
        rest_mb = int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{proc.pid}/status").read_text())[1]) / 1024
        start = time.monotonic()
        status, r = predict(url, data, "big.jpg")
        seconds = time.monotonic() - start
        status_text = Path(f"/proc/{proc.pid}/status").read_text()
        peak_mb = int(re.search(r"VmHWM:\s+(\d+) kB", status_text)[1]) / 1024
        assert status == 200, r
        assert (r["width"], r["height"]) == (7200, 5400) and len(r["instances"]) == 64  # 16 queries x 4 classes
        status, _, coco = request(url + r["coco"])
        entries = json.loads(coco)
        assert status == 200 and len(entries) == 64
        assert [int(mask_util.area(e["segmentation"])) for e in entries] == [i["area"] for i in r["instances"]]
        status, _, png = request(url + r["overlay"])
        assert status == 200 and Image.open(io.BytesIO(png)).size == (7200, 5400)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    print(f"38.9 MP at threshold 0: {seconds:.1f} s, RSS at rest {rest_mb:.0f} MB, peak {peak_mb:.0f} MB")
    assert peak_mb - rest_mb < BYTES_PER_PIXEL * 7200 * 5400 / 2**20, f"peak {peak_mb:.0f} MB, at rest {rest_mb:.0f}"


# ---------------------------------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------------------------------


def test_twenty_simultaneous_uploads_all_get_answers(running):
    """20 clients post a 1 MB image at the same moment: every one gets its 200 (no reset: the listen backlog is 128
    and the waiting line holds 32)."""
    rng = np.random.default_rng(1)
    noisy = png_bytes(rng.integers(0, 255, (600, 600, 3), dtype=np.uint8))  # ~1 MB that PNG cannot compress
    assert len(noisy) > 1_000_000
    barrier = threading.Barrier(20)
    answers: list = [None] * 20

    def client(i: int) -> None:
        barrier.wait()
        try:
            answers[i] = predict(running.url, noisy, f"noise {i}.png")[0]
        except OSError as e:
            answers[i] = repr(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert answers == [200] * 20


def test_a_full_waiting_line_is_503_with_retry_after(predictor, demo_weights, monkeypatch):
    release = threading.Event()
    original = compact.find_instances

    def slow(*args, **kwargs):
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(compact, "find_instances", slow)
    r = Running(make_app(predictor, demo_weights, waiting=1))
    try:
        data = png_bytes(photo(1))
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(predict(r.url, data))) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.5)  # one inside the heavy section, one waiting
        status, headers, body = request(f"{r.url}/api/predict?name=x.png", data)
        assert status == 503 and int(headers["Retry-After"]) >= 1 and "in line" in json.loads(body)["error"]
        release.set()
        for t in threads:
            t.join(60)
        assert [s for s, _ in results] == [200, 200]
    finally:
        release.set()
        r.stop()


def test_idle_and_half_sent_connections_hold_no_thread_and_time_out(predictor, demo_weights):
    r = Running(make_app(predictor, demo_weights), header_timeout=1.0, idle_timeout=3.0)
    try:
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", r.port)) for _ in range(300)]
        slow = socket.create_connection(("127.0.0.1", r.port), timeout=10)
        slow.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1")  # never finishes its headers
        time.sleep(0.5)
        assert threading.active_count() <= before + 1  # idle connections wait in a selector, not in threads
        start = time.monotonic()
        assert request(r.url + "/api/info", timeout=10)[0] == 200  # the server still answers at once
        assert time.monotonic() - start < 2
        assert slow.recv(1 << 16) == b""  # the half-sent request is cut off after header_timeout
        time.sleep(3.5)
        for sock in idle[:5]:  # idle connections are closed after idle_timeout
            sock.settimeout(5)
            assert sock.recv(16) == b""
        for sock in [*idle, slow]:
            sock.close()
        assert request(r.url + "/api/info", timeout=10)[0] == 200
    finally:
        r.stop()


def test_a_slow_upload_is_answered_408(predictor, demo_weights, monkeypatch):
    import fastinst.engine.serving as serving

    monkeypatch.setattr(serving, "MIN_UPLOAD_RATE", 1_000_000)
    r = Running(make_app(predictor, demo_weights), header_timeout=0.5)
    try:
        with socket.create_connection(("127.0.0.1", r.port), timeout=10) as sock:
            head = f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{r.port}\r\nContent-Length: 1000000\r\n\r\n"
            sock.sendall(head.encode() + b"x" * 1000)  # then nothing: the deadline is 0.5 s + 1 s
            answer = b""
            while chunk := sock.recv(1 << 16):
                answer += chunk
        status, body = status_of(answer)
        assert status == 408 and "too slowly" in body["error"]
    finally:
        r.stop()


# ---------------------------------------------------------------------------------------------------------------------
# Strict HTTP
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Length": "²"}, 400),  # a Unicode digit
        ({"Content-Length": "-1"}, 400),
        ({"Content-Length": "1e3"}, 400),
        ({"Content-Length": "0x10"}, 400),
        ({"Content-Length": "99999999999999999999"}, 400),
        ({"Transfer-Encoding": "chunked"}, 411),
    ],
)
def test_content_length_must_be_plain_digits(running, headers, status):
    answer = post_raw(running.port, "/api/predict?name=x.png", b"0\r\n\r\n", headers)
    got, body = status_of(answer)
    assert got == status and body["error"], answer


def test_two_content_lengths_or_hosts_are_refused(running):
    data = png_bytes(photo(2))
    head = f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{running.port}\r\n"
    for extra in (f"Content-Length: {len(data)}\r\nContent-Length: {len(data)}\r\n", "Host: 127.0.0.1\r\n"):
        answer = raw_exchange(running.port, (head + extra + "\r\n").encode() + data)
        status, body = status_of(answer)
        assert status == 400 and "more than one" in body["error"]


def test_standard_library_errors_are_json(running):
    for raw, status in (
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 120 + b"\r\n", 431),
        (b"BREW /pot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"NONSENSE\r\n\r\n", 400),
    ):
        got, body = status_of(raw_exchange(running.port, raw))
        assert got == status and body["error"]


# ---------------------------------------------------------------------------------------------------------------------
# Multipart uploads
# ---------------------------------------------------------------------------------------------------------------------


def test_multipart_form_upload(running):
    data = png_bytes(photo(3))
    body = multipart({"threshold": "0.0"}, [("file", "写真.png", data)])
    answer = post_raw(
        running.port,
        "/api/predict",
        body,
        {"Content-Type": "multipart/form-data; boundary=fastinst-test", "Content-Length": str(len(body))},
    )
    status, r = status_of(answer)
    assert status == 200 and r["name"] == "写真.png" and r["instances"]
    # the fields may also come in the query; a part with a boundary-like line inside the file is still one file
    tricky = data + b"\r\n--fastinst-tes"
    body = multipart({}, [("image", "x.png", tricky)], boundary='"quoted boundary"'[1:-1])
    answer = post_raw(
        running.port,
        "/api/predict?threshold=0.99&name=given.png",
        body,
        {"Content-Type": 'multipart/form-data; boundary="quoted boundary"', "Content-Length": str(len(body))},
    )
    status, r = status_of(answer)
    assert status == 200 and r["name"] == "given.png"


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nxx', "boundary=b", "closing"),
        (b"no boundary anywhere", "boundary=b", "malformed"),
        (b"--b--\r\n", "boundary=b", "no file"),
        (b"--b--\r\n", "boundary=" + "x" * 80, "boundary"),
        (b"--b--\r\n", "charset=utf-8", "boundary"),
        (
            b'--b\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\n1\r\n'
            b'--b\r\nContent-Disposition: form-data; name="g"; filename="b"\r\n\r\n2\r\n--b--\r\n',
            "boundary=b",
            "one image",
        ),
        (b"--b\r\nContent-Type: text/plain\r\n\r\n1\r\n--b--\r\n", "boundary=b", "form-data"),
    ],
)
def test_bad_multipart_bodies_are_400(running, body, content_type, words):
    headers = {"Content-Type": f"multipart/form-data; {content_type}", "Content-Length": str(len(body))}
    status, r = status_of(post_raw(running.port, "/api/predict", body, headers))
    assert status == 400 and words in r["error"], r


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_form_upload(running, tmp_path):
    path = tmp_path / "写真.jpg"
    path.write_bytes(jpeg(photo(4)))
    out = subprocess.run(
        ["curl", "-sS", "-F", f"file=@{path}", "-F", "threshold=0", f"{running.url}/api/predict"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    r = json.loads(out.stdout)
    assert r["name"] == "写真.jpg" and r["instances"] and r["width"] == 96


# ---------------------------------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------------------------------


def test_downloads_merge_with_their_own_image_ids_and_names(running):
    from pycocotools.coco import COCO

    ids, merged = [], []
    for i, name in enumerate(("写真.png", "b.png")):
        status, r = predict(running.url, png_bytes(photo(5 + i)), name)
        assert status == 200
        status, headers, body = request(running.url + r["coco"])
        entries = json.loads(body)
        assert {e["image_id"] for e in entries} == {r["image_id"]} and {e["file_name"] for e in entries} == {name}
        ids.append(r["image_id"])
        merged += entries
        if name == "写真.png":
            disposition = headers["Content-Disposition"]
            assert "filename*=UTF-8''" + quote("写真_coco.json") in disposition
            assert 'filename="' in disposition and disposition.isascii()
            status, headers, _ = request(running.url + r["overlay"])
            assert "filename*=UTF-8''" + quote("写真_overlay.png") in headers["Content-Disposition"]
    assert len(set(ids)) == 2
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "height": 96, "width": 96} for i in ids],
        "annotations": [],
        "categories": [{"id": c} for c in {e["category_id"] for e in merged}],
    }
    gt.createIndex()
    dt = gt.loadRes(merged)  # both images' instances, each on its own image
    assert {len(dt.getAnnIds(imgIds=[i])) for i in ids} == {len(merged) // 2}


def test_results_expire_with_a_message(predictor, demo_weights):
    r = Running(make_app(predictor, demo_weights, keep_results=2))
    try:
        answers = [predict(r.url, png_bytes(photo(i)), f"p{i}.png")[1] for i in range(3)]
        status, _, body = request(r.url + answers[0]["coco"])
        assert status == 404 and "expired" in json.loads(body)["error"]
        assert request(r.url + answers[2]["overlay"])[0] == 200
        assert len(list(r.app.results.root.iterdir())) == 2  # the files are gone, not only the index
    finally:
        r.stop()
    assert not r.app.results.root.exists()  # the results folder leaves with the server


def test_a_model_that_cannot_load_is_one_message_and_one_attempt(predictor, demo_weights, monkeypatch):
    import fastinst.factory

    attempts = []

    def offline(*args, **kwargs):
        attempts.append(args)
        raise CheckpointError("could not download https://example.invalid/d1.pth: no network; download it yourself")

    monkeypatch.setattr(fastinst.factory, "load_backend", offline)
    r = Running(make_app(predictor, demo_weights))
    try:
        data = png_bytes(photo(1))
        for _ in range(3):
            status, answer = predict(r.url, data, model=1)
            assert status == 400 and answer["model_error"] is True and "no network" in answer["error"]
        assert len(attempts) == 1  # remembered: no new download per image
        info = json.loads(request(r.url + "/api/info")[2])
        assert "no network" in info["models"][1]["error"]
        assert predict(r.url, data, model=1, retry=1)[0] == 400 and len(attempts) == 2  # asked again: one retry
        assert predict(r.url, data, model=0)[0] == 200  # the other model keeps working
    finally:
        r.stop()


# ---------------------------------------------------------------------------------------------------------------------
# Odd images
# ---------------------------------------------------------------------------------------------------------------------


def test_a_thin_image_gets_instances_or_one_message(running):
    strip = np.random.default_rng(2).integers(0, 255, (1, 30000, 3), dtype=np.uint8)
    status, r = predict(running.url, png_bytes(strip), "strip.png")
    if status == 200:
        assert (r["width"], r["height"]) == (30000, 1) and r["instances"]
        assert request(running.url + r["overlay"])[0] == 200
    else:
        assert status == 400 and "\n" not in r["error"] and r["error"].startswith("strip.png")
    status, r = predict(running.url, png_bytes(strip.transpose(1, 0, 2).copy()), "tall.png")
    assert status == 200 or (status == 400 and r["error"].startswith("tall.png"))


def test_compact_instances_match_the_predictor(predictor):
    """`compact.find_instances` finds what `Predictor.predict_batch` finds: classes, scores, masks (as RLE), boxes;
    also above `TILED_PIXELS` (column tiles), where the masks are the same and the scores equal to rounding."""
    from pycocotools import mask as mask_util

    for image, tiled in ((photo(1, 192), False), (np.asarray(Image.fromarray(photo(2)).resize((800, 600))), True)):
        if tiled:
            old, compact.TILED_PIXELS = compact.TILED_PIXELS, 1 << 18
        try:
            found = compact.find_instances(predictor, image, 0.0, 100)
        finally:
            if tiled:
                compact.TILED_PIXELS = old
        (ref,) = predictor.predict_batch([image], None, 0.0, 100)
        assert [i.label for i in found] == ref.labels.tolist()
        np.testing.assert_allclose([i.score for i in found], ref.scores, rtol=1e-5 if tiled else 0)
        for inst, mask, box in zip(found, ref.masks, ref.boxes, strict=True):
            assert np.array_equal(compact.decode(inst.rle), mask)
            assert np.array_equal(compact.decode(inst.rows_rle).T, mask)
            assert int(mask_util.area(inst.rle)) == inst.area
            assert list(inst.box) == box.tolist() and inst.area == int(mask.sum())
        overlay = image.copy()
        compact.draw_overlay(overlay, found, predictor.names)
        assert np.abs(overlay.astype(int) - ref.plot()).max() <= 2  # rounded per instance, not once


def test_compact_instances_match_a_bf16_predictor(demo_weights):
    """With a bf16 network (the default on CPUs with bf16 hardware) the app's masks come from the same short route
    as `predict_batch`'s (`model/span_masks.py`), one mask at a time: the same instances, scores and masks."""
    predictor = Predictor(load_model("fastinst-demo", demo_weights, "cpu"), dtype="bf16")
    image = photo(3, 192)
    found = compact.find_instances(predictor, image, 0.0, 100)
    (ref,) = predictor.predict_batch([image], None, 0.0, 100)
    assert len(found) == len(ref) > 0
    assert [i.label for i in found] == ref.labels.tolist()
    np.testing.assert_array_equal([i.score for i in found], ref.scores)
    for inst, mask in zip(found, ref.masks, strict=True):
        assert np.array_equal(compact.decode(inst.rle), mask)


def test_write_png_round_trips(tmp_path):
    image = np.random.default_rng(3).integers(0, 255, (37, 1001, 3), dtype=np.uint8)
    size = compact.write_png(tmp_path / "x.png", image)
    assert size == (tmp_path / "x.png").stat().st_size
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), image)


# ---------------------------------------------------------------------------------------------------------------------
# Fuzz
# ---------------------------------------------------------------------------------------------------------------------


def _valid_requests(port: int, rid: str) -> list[tuple[str, str, dict[str, str], bytes]]:
    image = png_bytes(photo(6, 64))
    form = multipart({"threshold": "0.5"}, [("file", "f.png", image)], "BoUnDaRy")
    host = {"Host": f"127.0.0.1:{port}"}
    return [
        ("GET", "/", host, b""),
        ("GET", "/api/info", {**host, "Connection": "keep-alive"}, b""),
        ("HEAD", "/api/info", host, b""),
        ("GET", f"/api/results/{rid}/coco.json", host, b""),
        ("POST", "/api/predict?threshold=0.5&name=a.png", {**host, "Content-Type": "application/octet-stream"}, image),
        ("POST", "/api/predict", {**host, "Content-Type": "multipart/form-data; boundary=BoUnDaRy"}, form),
    ]


def _mutate(rng: random.Random, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    headers = dict(headers)
    version = "HTTP/1.1"
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(14)
        if kind == 0:
            method = rng.choice(["get", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "G\x00T", "Ü", "", "CONNECT"])
        elif kind == 1:
            path = rng.choice(
                [
                    "",
                    "*",
                    "/api/predict?model=9",
                    "/%ff%fe",
                    "/api/results/r/../../x",
                    "//",
                    "/" * 3000,
                    "/api/predict?threshold=nan",
                    "/api/predict?model=-1&threshold=2",
                    "http://evil/",
                ]
            )
        elif kind == 2:
            version = rng.choice(["HTTP/1.0", "HTTP/0.9", "HTTP/9.9", "HTTP/1.1.1", "HTTQ/1.1", "", "HTTP/1.x"])
        elif kind == 3:
            headers["Content-Length"] = rng.choice(
                [
                    "²",
                    "-0",
                    "+5",
                    " 5 ",
                    "5,5",
                    "",
                    "1" * 30,
                    str(len(body) + 7),
                    str(max(0, len(body) - 7)),
                    "0",
                    "abc",
                ]
            )
        elif kind == 4:
            headers[rng.choice(["Content-Length", "Host", "Transfer-Encoding", "Expect"])] = rng.choice(
                ["chunked", "100-continue", "gzip, chunked", "evil.example", "12"]
            )
        elif kind == 5 and headers:
            headers.pop(rng.choice(list(headers)))
        elif kind == 6:
            headers["Content-Type"] = rng.choice(
                [
                    "multipart/form-data",
                    "multipart/form-data; boundary=",
                    "multipart/form-data; boundary=" + "z" * 200,
                    "multipart/form-data; boundary=other",
                    "text/plain; charset=utf-8",
                    'multipart/form-data; boundary="BoUnDaRy"',
                ]
            )
        elif kind == 7 and body:
            cut = rng.randrange(len(body))
            body = body[:cut]
        elif kind == 8 and body:
            data = bytearray(body)
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            body = bytes(data)
        elif kind == 9:
            body = body.replace(b"BoUnDaRy", rng.choice([b"BoUnDaRx", b"", b"BoUnDaRy--", b"\r\n"]), rng.randint(1, 3))
        elif kind == 10:
            headers[rng.choice(["X-" + "a" * 70000, "Bad Header", "X\x00", "Ünicode", "Origin"])] = "v"
        elif kind == 11:
            headers["Connection"] = rng.choice(["close", "keep-alive", "upgrade", "\r\n"])
        elif kind == 12:
            body = body + rng.choice(
                [b"GET / HTTP/1.1\r\n\r\n", b"\r\n\r\n", bytes(rng.randrange(256) for _ in range(50))]
            )
        else:
            headers["X-Fold"] = "a\r\n b"  # an obsolete folded header
    head = f"{method} {path} {version}".rstrip() + "\r\n"
    if "Content-Length" not in headers and body and rng.random() < 0.7:
        headers["Content-Length"] = str(len(body))
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + body


def _check_answer(answer: bytes, raw: bytes, what: str) -> None:
    """A closed connection (no bytes), or answers each with a status line; an error status carries a JSON message."""
    if not answer:
        return
    first = answer.split(b"\r\n", 1)[0]
    assert re.fullmatch(rb"HTTP/1\.[01] [1-5][0-9][0-9] [ -~]*", first), (what, answer[:200])

    class Sock:
        def makefile(self, *args, **kwargs):
            return io.BytesIO(answer)

    method = raw.split(b" ", 1)[0].decode("latin-1")  # a HEAD answer has a Content-Length and no body
    resp = http.client.HTTPResponse(Sock(), method=method)  # type: ignore[arg-type]
    resp.begin()  # skips an interim 100 Continue
    body = resp.read() if resp.getheader("Content-Length") else b""
    assert 200 <= resp.status < 600, (what, answer[:200])
    if resp.status >= 400 and body:
        assert json.loads(body)["error"], (what, body[:200])


def test_fuzzed_requests_get_answers_and_the_server_keeps_serving(running):
    status, r = predict(running.url, png_bytes(photo(6, 64)), "seed.png")
    assert status == 200
    valid = _valid_requests(running.port, r["id"])
    rng = random.Random(25)
    for i in range(400):
        method, path, headers, body = rng.choice(valid)
        raw = _mutate(rng, method, path, headers, body)
        try:
            answer = raw_exchange(running.port, raw, timeout=60)
        except OSError as e:  # the server closed before we finished sending: a closed connection
            answer = b""
            assert isinstance(e, (ConnectionResetError, BrokenPipeError)), e
        _check_answer(answer, raw, f"case {i}: {raw[:300]!r}")
    assert request(running.url + "/api/info")[0] == 200
    assert predict(running.url, png_bytes(photo(7, 64)))[0] == 200
    assert not [line for line in running.logs if "Traceback" in line], running.logs
