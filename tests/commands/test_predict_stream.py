"""`fastinst predict` on live sources: a stream URL served over HTTP here, stopping by --max-frames, by the stream's
end and by SIGTERM; an unreachable URL and a missing camera; which SOURCE string is which kind of source; a live
source faster than the model (frames dropped, counted, the overlay keeping the source's timing); --save-json's memory
flat over a long stream; image URLs."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import signal
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastinst.commands.predict as command
import fastinst.engine.video as video_module
from fastinst.cli import build_parser, main
from fastinst.engine.predictor import Predictor
from fastinst.engine.sources import camera_source, parse_source
from fastinst.errors import FastInstError
from live_fakes import FakeReader, SlowModel

av = pytest.importorskip("av")

FRAMES = 6
LONG = 30  # /stall.ts sends the first half of a clip this long


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An MPEG-TS clip of FRAMES frames at http://127.0.0.1:PORT/clip.ts, and /stall.ts: the first half of a LONG
    frame clip, then the connection stays open without data until the test ends (a live stream that stalls)."""
    folder = tmp_path_factory.mktemp("www")
    Image.fromarray(_image(99)).save(folder / "photo.png")
    for name, count in (("clip.ts", FRAMES), ("long.ts", LONG)):
        with av.open(str(folder / name), mode="w", format="mpegts") as container:
            stream = container.add_stream("mpeg4", rate=5)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            for n in range(count):
                for packet in stream.encode(av.VideoFrame.from_ndarray(_image(n), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    release = threading.Event()
    data = (folder / "long.ts").read_bytes()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/stall.ts":
                return super().do_GET()
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            release.wait(60)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    release.set()
    server.shutdown()
    server.server_close()


def _predict(weights: str, out: Path, *sources: str, extra: tuple[str, ...] = ()) -> int:
    argv = ["predict", "--model", "fastinst-demo", "--weights", weights, "--device", "cpu", "--output", str(out)]
    return main([*argv, *extra, *sources])


def _frames(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_stream_url_frames_as_they_arrive(demo_weights, served, tmp_path, capsys):
    url = f"{served}/clip.ts"
    out = tmp_path / "out"
    extra = ("--save-json", "--max-frames", "4", "--confidence-threshold", "0", "--max-dets", "2")
    assert _predict(demo_weights, out, url, extra=extra) == 0
    assert "4 video frames" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "clip.mp4",
        "predictions.json",
        "predictions.run.json",
    ]  # no temporary file left
    frames = _frames(out / "clip.mp4")
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3)
    entries = json.loads((out / "predictions.json").read_text())
    assert len(entries) == 4 * 2 and {e["file_name"] for e in entries} == {url}
    assert sorted({e["frame"] for e in entries}) == [0, 1, 2, 3]
    by_frame = {e["frame"]: e["image_id"] for e in entries}
    assert len(set(by_frame.values())) == 4 and all(
        by_frame[f] == e["image_id"] for f in by_frame for e in entries if e["frame"] == f
    )  # one id per frame
    # without --max-frames the stream's end finishes the file
    assert _predict(demo_weights, tmp_path / "all", url, extra=("--score-threshold", "0.5")) == 0
    assert len(_frames(tmp_path / "all" / "clip.mp4")) == FRAMES


def test_sigterm_while_the_stream_stalls_finishes_the_video(demo_weights, served, tmp_path, monkeypatch, capsys):
    """The stream sends half the clip and then nothing; SIGTERM arrives while predict waits for the next frame (a
    blocking PyAV read does not see Python signals: the reading thread keeps the wait interruptible)."""
    from fastinst.engine import writers

    written: list[int] = []  # the source index of each frame written
    write = writers.VideoWriter.write

    def logged(self, frame, index=None):
        written.append(index)
        write(self, frame, index)

    monkeypatch.setattr(writers.VideoWriter, "write", logged)

    def terminate_when_stalled():
        deadline = time.monotonic() + 60
        while not written and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the first half is decoded and written by now; predict waits on the silent connection
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=terminate_when_stalled, daemon=True).start()
    out = tmp_path / "out"
    start = time.monotonic()
    assert _predict(demo_weights, out, f"{served}/stall.ts", extra=("--save-json", "--score-threshold", "0")) == 0
    assert time.monotonic() - start < 45  # well before the server would give up
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is only there while the stream is read
    err = capsys.readouterr().err
    assert "stall.ts: stopped by SIGTERM after" in err and "is complete" in err
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json", "predictions.run.json", "stall.mp4"]
    frames = _frames(out / "stall.mp4")
    assert 1 <= len(frames) < LONG and len(frames) == len(written)
    # a stream without a known length is live: frames the model was too slow for are dropped, and each entry's
    # `frame` is its index in the stream
    assert written == sorted(set(written)) and written[-1] < LONG
    entries = json.loads((out / "predictions.json").read_text())
    assert sorted({e["frame"] for e in entries}) == written
    (video,) = json.loads((out / "predictions.run.json").read_text())["videos"]
    assert video["live"] is True and video["frames"] == len(written) and video["dropped"] + len(written) <= LONG


def test_unreachable_url_and_missing_camera_are_one_line(demo_weights, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(demo_weights, out, "http://127.0.0.1:1/x", extra=("--save-json",)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: http://127.0.0.1:1/x: cannot open") and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())  # no overlay, no predictions.json, no temporary file
    if Path("/dev/video7").exists():
        pytest.skip("this machine has a /dev/video7")
    assert _predict(demo_weights, out, "--webcam", "7") == 2
    err = capsys.readouterr().err
    assert "camera 7 (/dev/video7): cannot open" in err and len(err.strip().splitlines()) == 1


def test_which_source_is_which(tmp_path, monkeypatch):
    cam = parse_source("0", platform="linux")
    assert cam is not None and (cam.kind, cam.url, cam.format, cam.stem) == ("camera", "/dev/video0", "v4l2", "camera0")
    mac = parse_source("1", platform="darwin")
    assert mac is not None and (mac.url, mac.format) == ("1", "avfoundation")
    with pytest.raises(FastInstError, match="video=NAME"):
        parse_source("0", platform="win32")
    win = parse_source("video=Integrated Camera", platform="win32")
    assert win is not None and (win.kind, win.format, win.stem) == ("device", "dshow", "Integrated_Camera")
    dev = parse_source("/dev/video2", platform="linux")
    assert dev is not None and (dev.kind, dev.url, dev.format, dev.stem) == ("device", "/dev/video2", "v4l2", "video2")
    for url in ("rtsp://cam.local:554/live/ch1", "RTMP://h/app/key", "https://h/a/b.m3u8", "udp://239.0.0.1:1234",
                "tcp://10.0.0.2:9000", "http://127.0.0.1:8000/clip.ts"):  # fmt: skip
        src = parse_source(url)
        assert src is not None and src.kind == "url" and src.url == url and src.format is None and src.timeout
    assert parse_source("rtsp://cam.local:554/live/ch1").stem == "ch1"  # type: ignore[union-attr]
    assert parse_source("udp://239.0.0.1:1234").stem == "239.0.0.1"  # type: ignore[union-attr]
    secret = parse_source("rtsp://admin:hunter2@cam/stream")
    assert secret is not None and "hunter2" in secret.url and "hunter2" not in secret.name
    assert secret.name == "rtsp://admin:***@cam/stream"
    with pytest.raises(FastInstError, match="unsupported URL scheme 'ftp'"):
        parse_source("ftp://h/x.mp4")
    for path in ("photo.jpg", "clips/a.mp4", "*.png", "/data/img", "C:\\x\\y.jpg", "video=cam"):
        assert parse_source(path, platform="linux") is None, path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "3").mkdir()  # a folder called 3 is a folder, not camera 3
    assert parse_source("3", platform="linux") is None and parse_source("4", platform="linux") is not None
    assert camera_source(5, "linux").name == "camera 5 (/dev/video5)"


def test_webcam_and_threshold_options():
    parser, _ = build_parser()
    args = parser.parse_args(["predict", "--webcam"])
    assert args.webcam == 0 and args.sources == []
    args = parser.parse_args(["predict", "--webcam", "2", "--confidence-threshold", "0.6", "--max-frames", "10"])
    assert (args.webcam, args.score_threshold, args.max_frames) == (2, 0.6, 10)
    assert main(["predict", "--weights", "x.pth"]) == 2  # neither SOURCE nor --webcam


def test_webcam_and_threshold_options_include_live_ones():
    parser, _ = build_parser()
    args = parser.parse_args(["predict", "0"])
    assert (args.every_frame, args.timeout) == (False, 10.0)
    args = parser.parse_args(["predict", "0", "--every-frame", "--timeout", "2.5"])
    assert (args.every_frame, args.timeout) == (True, 2.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "0", "--timeout", "0"])


# ---------------------------------------------------------------------------------------------------------------------
# Live means live: fake streams (`live_fakes`) into a fake model
# ---------------------------------------------------------------------------------------------------------------------


def _fake_run(monkeypatch, reader: FakeReader, model: SlowModel) -> None:
    """`fastinst predict` reads `reader` for any camera or stream, with `model` as the network."""
    monkeypatch.setattr(video_module, "open_video", lambda source, timeout=None: reader)
    monkeypatch.setattr(command, "build_predictor", lambda args, dataset=None: Predictor(model))


def _frame_numbers(video: Path, rate: float = 25.0) -> list[int]:
    """Each frame of an overlay video as its source frame number (its time x the source's rate)."""
    with av.open(str(video)) as container:
        return [round(float(f.time) * rate) for f in container.decode(video=0)]


def test_a_live_stream_faster_than_the_model_drops_frames(monkeypatch, tmp_path, capsys):
    """150 frames sent at 200 fps into a model that takes 20 ms a frame: most frames are dropped, the summary line,
    the stream's own line and predictions.run.json count them, the entries name each predicted frame by its index in
    the stream, and the overlay video shows each predicted frame at its time in the stream."""
    reader = FakeReader(150, interval=0.005, name="udp://127.0.0.1:9/cam")
    _fake_run(monkeypatch, reader, SlowModel(delay=0.02))
    out = tmp_path / "out"
    assert main(["predict", "--weights", "x.pth", "--output", str(out), "--save-json", "udp://127.0.0.1:9/cam"]) == 0
    captured = capsys.readouterr()
    summary = captured.out.strip().splitlines()[-1]
    found = re.search(r"(\d+) video frames \((\d+) dropped to keep up with live sources\)", summary)
    assert found, summary
    frames, dropped = int(found[1]), int(found[2])
    assert dropped >= 75 and frames + dropped <= 150
    assert f"udp://127.0.0.1:9/cam: {frames} frames ({dropped} dropped to keep up);" in captured.err
    (video,) = json.loads((out / "predictions.run.json").read_text())["videos"]
    assert video == {"source": "udp://127.0.0.1:9/cam", "frames": frames, "dropped": dropped, "live": True}
    entries = json.loads((out / "predictions.json").read_text())
    numbers = sorted({e["frame"] for e in entries})
    assert len(numbers) == frames and numbers[-1] >= 140 and len(entries) == frames
    assert _frame_numbers(out / "cam.mp4") == numbers  # held on screen until the next predicted frame

    reader = FakeReader(40, interval=0.001, name="udp://127.0.0.1:9/cam")  # --every-frame: none dropped
    _fake_run(monkeypatch, reader, SlowModel(delay=0.005))
    assert (
        main(["predict", "--weights", "x.pth", "--output", str(tmp_path / "all"), "--every-frame", "udp://h:9/cam"])
        == 0
    )
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "40 video frames, 40 instances" in summary and "dropped" not in summary
    assert _frame_numbers(tmp_path / "all" / "cam.mp4") == list(range(40))


def test_save_json_memory_is_flat_over_a_long_stream(monkeypatch, tmp_path, capsys):
    """2,000 frames with two instances each through --save-json: the Python memory in use once 500 frames are done
    and once all 2,000 are differs by far less than the entries written in between (which the run used to hold
    until the end), and the file holds them all, one a line."""
    frames, first, last = 2000, 500, 2000
    traced: dict[int, int] = {}

    def probe(calls: int) -> None:
        if calls in (first, last):
            traced[calls] = tracemalloc.get_traced_memory()[0]

    _fake_run(monkeypatch, FakeReader(frames), SlowModel(instances=2, hook=probe))
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        argv = ["predict", "--weights", "x.pth", "--output", str(out), "--save-json", "--every-frame", "0"]
        assert main(argv) == 0
    finally:
        tracemalloc.stop()
    assert f"{frames} video frames, {2 * frames} instances" in capsys.readouterr().out
    text = (out / "predictions.json").read_text()
    entries = json.loads(text)
    assert len(entries) == 2 * frames and len(text.splitlines()) == 2 * frames + 2  # "[", one entry a line, "]"
    written = len(text) * (last - first) / frames  # bytes of JSON the frames between the two probes made
    growth = traced[last] - traced[first]
    assert growth < written / 10, f"memory grew by {growth} bytes over {last - first} frames ({written:.0f} of JSON)"


def test_image_urls(demo_weights, served, tmp_path, capsys):
    """An http(s) URL ending in an image extension is an image: downloaded, its overlay `<stem>.png`, its entries
    naming the URL; a missing one is one line."""
    out = tmp_path / "out"
    url = f"{served}/photo.png"
    assert _predict(demo_weights, out, url, extra=("--save-json", "--score-threshold", "0", "--max-dets", "3")) == 0
    assert "predict: 1 image, 3 instances" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["photo.png", "predictions.json", "predictions.run.json"]
    assert Image.open(out / "photo.png").size == (64, 48)
    entries = json.loads((out / "predictions.json").read_text())
    assert len(entries) == 3 and {e["file_name"] for e in entries} == {url} and "frame" not in entries[0]
    assert _predict(demo_weights, tmp_path / "none", f"{served}/missing.jpg") == 2
    assert capsys.readouterr().err.strip() == f"error: {served}/missing.jpg: HTTP 404 File not found"
