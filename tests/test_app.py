"""`fastinst app`: the local web page, over plain HTTP (urllib) and in a real headless browser (chromium + selenium).

One server on a free loopback port runs the tiny `fastinst-demo` variant with random weights from a checkpoint file
(at score threshold 0 random weights still give instances); the images are the synthetic shapes generator's.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
import torch
from PIL import Image

from fastinst.cli import build_parser
from fastinst.config import PUBLISHED
from fastinst.data.synthetic import render_sample
from fastinst.engine import compact
from fastinst.engine.app import PAGE, Server, content_disposition, png_bytes, safe_name, serve
from fastinst.engine.app_state import App, Choice, default_choices
from fastinst.engine.predictor import Predictor
from fastinst.errors import FastInstError
from fastinst.factory import build_model, load_model

REPO = Path(__file__).resolve().parents[1]
MAX_PIXELS = 600_000  # small, so a "huge" image for the test is small too
MAX_UPLOAD = 2 * 2**20


def photo(index: int = 0, size: int = 192) -> np.ndarray:
    return render_sample(7, "val", index, size)[0]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """(a fastinst-demo state dict with random weights, one that does not fit the variant)."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    sd = build_model("fastinst-demo").state_dict()
    good = root / "demo.pth"
    torch.save(sd, good)
    name = next(k for k, v in sd.items() if v.ndim == 4)  # the first conv: a wrong shape cannot load
    bad = root / "other.pth"
    torch.save({**sd, name: torch.zeros(3, 3, 1, 1)}, bad)
    return good, bad


class Running:
    """An App served on a thread; `url` is its base URL, `logs` what it logged."""

    def __init__(self, app: App, host: str = "127.0.0.1"):
        self.app = app
        self.logs: list[str] = []
        app.log = self.logs.append
        started = threading.Event()
        self.server: Server | None = None

        def ready(server: Server) -> None:
            self.server = server
            started.set()

        self.thread = threading.Thread(target=serve, args=(app, host, 0, ready), daemon=True)
        self.thread.start()
        assert started.wait(30)
        assert self.server is not None
        self.url = self.server.url.rstrip("/")

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture(scope="module")
def running(checkpoints):
    good, bad = checkpoints
    choices = [Choice("fastinst-demo", str(good), "demo.pth"), Choice("fastinst-demo", str(bad), "other.pth")]
    predictor = Predictor(load_model("fastinst-demo", good, "cpu"), dtype="fp32")
    app = App(
        choices,
        device="cpu",
        dtype="fp32",
        score_threshold=0.0,
        max_upload=MAX_UPLOAD,
        max_pixels=MAX_PIXELS,
        loaded=predictor,
    )
    r = Running(app)
    yield r
    r.stop()


def request(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """-> (status, headers, body); an HTTP error status is returned, not raised."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def predict(base: str, data: bytes, name: str = "photo.png", **query) -> tuple[int, dict]:
    q = urlencode({"model": 0, "threshold": 0.0, "name": name, **query})
    status, _, body = request(f"{base}/api/predict?{q}", data, {"Content-Type": "application/octet-stream"})
    return status, json.loads(body)


# ---------------------------------------------------------------------------------------------------------------------
# Plain HTTP
# ---------------------------------------------------------------------------------------------------------------------


def test_the_page_is_self_contained():
    html = PAGE.read_text()
    assert not re.findall(r"https?://", html), "the page must not name any outside URL"
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", html, re.I), "no external assets"
    assert "@import" not in html and "url(" not in html  # no fonts or images pulled in by CSS


def test_page_and_info(running):
    status, headers, body = request(running.url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert body == PAGE.read_bytes()
    assert "default-src 'none'" in headers["Content-Security-Policy"]  # the browser itself refuses outside fetches
    status, _, body = request(running.url + "/api/info")
    info = json.loads(body)
    assert status == 200 and [m["label"] for m in info["models"]] == ["demo.pth", "other.pth"]
    assert info["max_upload"] == MAX_UPLOAD and info["threshold"] == 0.0
    assert str(Path.home()) not in body.decode()  # no server paths on the page


def test_predict_and_downloads(running, checkpoints):
    from pycocotools import mask as mask_util

    image = photo(1)
    status, r = predict(running.url, png_bytes(image), "shapes 1.png")
    assert status == 200, r
    assert (r["name"], r["width"], r["height"]) == ("shapes 1.png", 192, 192)
    assert r["time_ms"] > 0 and r["instances"]
    # the same model through the Predictor finds the same instances
    direct = Predictor(load_model("fastinst-demo", checkpoints[0], "cpu"), dtype="fp32").predict(image, 1, 0.0)[0]
    assert [i["score"] for i in r["instances"]] == pytest.approx(direct.scores.tolist(), abs=1e-3)
    assert [i["class"] for i in r["instances"]] == direct.instance_names
    assert [i["area"] for i in r["instances"]] == direct.masks.reshape(len(direct), -1).sum(1).tolist()
    np.testing.assert_allclose([i["box"] for i in r["instances"]], direct.boxes, atol=0.1)

    status, headers, png = request(running.url + r["overlay"])
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert 'filename="shapes 1_overlay.png"' in headers["Content-Disposition"]
    overlay = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)
    status, headers, body = request(running.url + r["coco"])
    assert status == 200 and 'filename="shapes 1_coco.json"' in headers["Content-Disposition"]
    entries = json.loads(body)
    assert len(entries) == len(r["instances"])
    assert {e["file_name"] for e in entries} == {"shapes 1.png"} and {e["image_id"] for e in entries} == {r["image_id"]}
    assert [int(mask_util.area(e["segmentation"])) for e in entries] == [i["area"] for i in r["instances"]]
    assert [e["category_id"] for e in entries] == [direct.category_ids[int(k)] for k in direct.labels]


def test_threshold_filters(running):
    data = png_bytes(photo(2))
    _, low = predict(running.url, data)
    status, high = predict(running.url, data, threshold=0.99)
    assert status == 200 and len(high["instances"]) < len(low["instances"])
    assert all(i["score"] >= 0.99 for i in high["instances"])


def test_bad_uploads_are_messages_and_the_server_keeps_serving(running, tmp_path):
    status, r = predict(running.url, b"this is a text file, not a photo\n", "holiday.jpg")
    assert status == 400 and r["error"] == "holiday.jpg: not an image file or an unsupported format"
    assert "fastinst-app-" not in r["error"]  # the temporary file's path is not shown

    big = io.BytesIO()
    Image.new("RGB", (1000, 800)).save(big, format="PNG")  # 0.8 MP over the 0.6 MP limit; a few kB of PNG
    status, r = predict(running.url, big.getvalue(), "bomb.png")
    assert status == 400 and r["error"].startswith("bomb.png: image is 1000x800") and "decompression bomb" in r["error"]

    truncated = png_bytes(photo(3))[:500]
    status, r = predict(running.url, truncated, "cut.png")
    assert status == 400 and r["error"].startswith("cut.png: ")

    status, r = predict(running.url, b"", "empty.png")
    assert status == 400 and "empty" in r["error"]

    status, r = predict(running.url, png_bytes(photo(4)), model=7)
    assert status == 400 and "model choice 7" in r["error"]
    status, r = predict(running.url, png_bytes(photo(4)), threshold=1.5)
    assert status == 400 and "between 0 and 1" in r["error"]

    status, r = predict(running.url, png_bytes(photo(4)))
    assert status == 200 and r["instances"]


def test_oversized_upload_is_refused_before_reading(running):
    conn = http.client.HTTPConnection("127.0.0.1", running.server.server_address[1], timeout=30)
    conn.putrequest("POST", "/api/predict?name=huge.png")
    conn.putheader("Content-Length", str(50 * 2**20))  # announced, never sent
    conn.endheaders()
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 413 and "over the limit of 2.0 MB" in body["error"]
    assert predict(running.url, png_bytes(photo(5)))[0] == 200


def test_a_checkpoint_that_does_not_fit_is_a_message(running):
    status, r = predict(running.url, png_bytes(photo(6)), model=1)
    assert status == 400 and r["error"].startswith(str(running.app.choices[1].weights))
    assert predict(running.url, png_bytes(photo(6)), model=0)[0] == 200  # the first model still serves


def test_an_unexpected_failure_is_a_generic_line_and_a_log_entry(running, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something deep inside broke")

    monkeypatch.setattr(compact, "find_instances", broken)
    status, r = predict(running.url, png_bytes(photo(7)))
    assert status == 500 and r["error"].startswith("internal error") and "deep inside" not in r["error"]
    assert any("RuntimeError: something deep inside broke" in line for line in running.logs)
    monkeypatch.undo()
    assert predict(running.url, png_bytes(photo(7)))[0] == 200


def test_requests_are_served_on_threads_and_inference_runs_one_at_a_time(running, monkeypatch):
    active, most = [0], [0]
    original = compact.find_instances

    def slow(*args, **kwargs):
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.3)
        try:
            return original(*args, **kwargs)
        finally:
            active[0] -= 1

    monkeypatch.setattr(compact, "find_instances", slow)
    data = png_bytes(photo(8))
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(predict(running.url, data)[0])) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert request(running.url + "/api/info")[0] == 200  # the page still answers while the model is busy
    for t in threads:
        t.join(60)
    assert statuses == [200, 200, 200] and most[0] == 1


def test_requests_under_another_name_or_origin_are_refused(running):
    port = running.server.server_address[1]
    status, _, body = request(running.url + "/api/info", headers={"Host": f"attacker.example:{port}"})
    assert status == 403 and "refused" in json.loads(body)["error"]
    req_headers = {"Origin": "http://attacker.example", "Content-Type": "application/octet-stream"}
    status, _, body = request(running.url + "/api/predict?name=x.png", png_bytes(photo(0)), req_headers)
    assert status == 403
    status, _, body = request(running.url + "/api/results/r0123456789abcdef/coco.json")
    assert status == 404 and "expired" in json.loads(body)["error"]
    status, _, body = request(running.url + "/../../etc/passwd")
    assert status == 404


def test_port_in_use_and_choices(running):
    app = running.app
    with pytest.raises(FastInstError, match="already in use"):
        Server(app, "127.0.0.1", running.server.server_address[1])
    labels = [c.label for c in default_choices("fastinst-d1-r50", ["official", "/x/mine.pth"])]
    assert labels[0] == "fastinst-d1-r50 · official weights" and labels[1] == "mine.pth (fastinst-d1-r50)"
    assert len(labels) == 2 + len(PUBLISHED) - 1  # every other published variant, once
    assert safe_name("C:\\Users\\me\\cat?.jpg") == "cat_.jpg"
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("写真.jpg") == "写真.jpg" and safe_name("a\u202egpj.exe") == "a_gpj.exe"  # no bidi override
    assert content_disposition("a b.png") == 'attachment; filename="a b.png"'
    assert content_disposition("写真.png") == "attachment; filename=\"__.png\"; filename*=UTF-8''%E5%86%99%E7%9C%9F.png"


def test_cli_defaults():
    parser, _ = build_parser()
    args = parser.parse_args(["app"])
    assert (args.host, args.port, args.model, args.weights) == ("127.0.0.1", 7860, None, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["app", "--port", "70000"])


def test_cli_bad_start_is_one_line(checkpoints, tmp_path, capsys):
    from fastinst.cli import main

    assert main(["app", "--weights", str(tmp_path / "nope.pth"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.pth'}: no such checkpoint file"
    good = str(checkpoints[0])
    assert main(["app", "--model", "fastinst-demo", "--weights", good, "--weights", "gone.pth"]) == 2
    assert capsys.readouterr().err.strip() == "error: --weights gone.pth: no such checkpoint file"


def test_cli_serves_until_ctrl_c(checkpoints, tmp_path):
    """`fastinst app` in its own process: the all-interfaces warning, the URL line, a page, then Ctrl-C."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fastinst", "app", "--model", "fastinst-demo", "--weights", str(checkpoints[0])]
    cmd += ["--port", "0", "--host", "0.0.0.0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url, said = None, []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                break
            said.append(line)
            if m := re.search(r"open (http://\S+)", line):
                url = m[1]
        assert any(" · cpu · torch · " in line and "(auto: " in line for line in said), said  # what runs
        assert url is not None, proc.stderr.read() if proc.poll() is not None else "no URL printed"
        assert url.startswith("http://127.0.0.1:")
        status, _, body = request(url)
        assert status == 200 and b"FastInst" in body
        status, r = predict(url.rstrip("/"), png_bytes(photo(0)))
        assert status == 200 and r["instances"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "fastinst app: stopped" in out
    assert "warning: listening on 0.0.0.0" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------------------
# A real browser
# ---------------------------------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


def browser():
    """Headless chromium through selenium, with a fake camera; skips when either is missing."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install 'fastinst[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: script errors, CSP refusals
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1400",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def test_in_a_browser(running, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    files = []
    for i in (1, 2):
        path = tmp_path / f"shapes_{i}.png"
        Image.fromarray(photo(i)).save(path)
        files.append(path)
    broken = tmp_path / "notes.jpg"
    broken.write_text("a text file renamed .jpg\n")

    choices = running.app.choices
    driver = browser()
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(running.url + "/")
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
        options = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#model option")]
        assert [o.removesuffix(" (unavailable)") for o in options] == ["demo.pth", "other.pth"]

        def run_number() -> int:
            return int(driver.execute_script("return document.body.dataset.run || '0'"))

        def finished(before: int, cards: int) -> list:
            """Wait for a run after `before` to finish with `cards` cards -> the cards."""
            wait.until(lambda d: run_number() > before)
            wait.until(lambda d: d.execute_script("return document.body.dataset.busy") is None)
            found = driver.find_elements(By.CSS_SELECTOR, ".card.done, .card.failed")
            assert len(found) == cards, [c.text for c in found]
            return found

        def upload(paths: list[Path], cards: int) -> list:
            before = run_number()
            driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
            return finished(before, cards)

        # 1. two photos at once: an overlay, an instance table and a time each
        cards = upload(files, 2)
        for card, path in zip(cards, files, strict=True):
            assert card.find_element(By.TAG_NAME, "h2").text == path.name
            rows = card.find_elements(By.CSS_SELECTOR, "table.instances tbody tr")
            assert rows, card.text
            cells = [c.text for c in rows[0].find_elements(By.TAG_NAME, "td")]
            assert cells[0] == "1" and cells[1] in running.app.models[0].names
            assert 0 <= float(cells[2]) <= 1 and len(cells[3].split(",")) == 4 and int(cells[4]) >= 0
            assert card.find_element(By.CSS_SELECTOR, ".time").text.endswith(" ms")
            img = card.find_element(By.CSS_SELECTOR, "img.overlay")
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 192
        driver.save_screenshot(str(tmp_path / "app.png"))
        assert (tmp_path / "app.png").stat().st_size > 10_000

        # 2. a text file renamed .jpg: the message on the page
        (card,) = upload([broken], 1)
        error = card.find_element(By.CSS_SELECTOR, ".error")
        assert error.text == "notes.jpg: not an image file or an unsupported format"

        # 3. the next upload still works
        (card,) = upload(files[:1], 1)
        assert card.find_elements(By.CSS_SELECTOR, "table.instances tbody tr")

        # the threshold slider runs the last images again with the new value
        before = run_number()
        driver.execute_script(
            "const s = document.getElementById('threshold'); s.value = '1'; s.dispatchEvent(new Event('change'));"
        )
        (card,) = finished(before, 1)
        assert card.find_elements(By.CSS_SELECTOR, ".none") and not card.find_elements(By.TAG_NAME, "tr")

        # a camera snapshot (chromium's fake camera) goes through the same path
        driver.find_element(By.ID, "camera-start").click()
        wait.until(lambda d: d.execute_script("return document.getElementById('camera-video').videoWidth") > 0)
        driver.execute_script("const s = document.getElementById('threshold'); s.value = '0';")
        before = run_number()
        driver.find_element(By.ID, "camera-snap").click()
        (card,) = finished(before, 1)
        assert card.find_element(By.TAG_NAME, "h2").text.startswith("camera-") and "done" in card.get_attribute("class")
        assert card.find_elements(By.CSS_SELECTOR, "table.instances tbody tr")

        # nothing was fetched from anywhere but the app itself
        urls = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        urls.append(driver.execute_script("return location.href"))
        assert urls and all(u.startswith(running.url + "/") for u in urls), urls
        console = [e["message"] for e in driver.get_log("browser")]
        assert not [m for m in console if "Content Security Policy" in m or "Uncaught" in m], console

        # a download the server no longer keeps: said on its card (keep 1: the second result pushes out the first)
        running.app.results.keep = 1
        cards = upload(files, 2)
        cards[1].find_element(By.CSS_SELECTOR, "a.coco-link").click()
        cards[0].find_element(By.CSS_SELECTOR, "a.coco-link").click()
        wait.until(lambda d: cards[0].find_elements(By.CSS_SELECTOR, ".expired"))
        assert "expired" in cards[0].find_element(By.CSS_SELECTOR, ".expired").text
        assert not cards[1].find_elements(By.CSS_SELECTOR, ".expired")

        # a model that cannot be loaded: one message above the results, the run stopped, the choice marked
        before = run_number()
        Select(driver.find_element(By.ID, "model")).select_by_value("1")
        wait.until(lambda d: run_number() > before)
        wait.until(lambda d: d.execute_script("return document.body.dataset.busy") is None)
        banner = driver.find_element(By.ID, "banner").text
        assert banner.startswith("other.pth could not be loaded (") and "Choose it again" in banner
        assert not driver.find_elements(By.CSS_SELECTOR, ".card")  # no card repeats the message
        assert driver.find_element(By.CSS_SELECTOR, "#model option[value='1']").text == "other.pth (unavailable)"

        # 420 px wide (a phone), with the long labels of the published variants: no sideways scrolling
        long = " · official weights (download) · fastinst-d3-r50-vd-dcn"
        running.app.choices = [replace(c, label=c.label + long) for c in choices]
        metrics = {"width": 420, "height": 900, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        driver.get(running.url + "/")
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
        upload(files[:1], 1)
        scroll, client = driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert client <= 420 and scroll <= client, f"the page is {scroll} px wide in a {client} px window"
    finally:
        running.app.results.keep = 500
        running.app.choices = choices
        driver.quit()
