"""Live means live (issue #25): a camera or live stream faster than the model gives the newest frames, the others
dropped and counted, so the latency stays bounded however slow the model; every frame when asked (or for a source
with an end). The Python API takes camera indices, stream URLs and image URLs as the CLI does. Fake readers and a
deliberately slowed fake model: no PyAV needed."""

from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastinst.engine.predictor as predictor_module
from fastinst.engine.predictor import Predictor
from fastinst.engine.sources import FrameBatches, FrameFeed, LiveSource, parse_source
from fastinst.errors import FastInstError
from live_fakes import FakeReader, SlowModel


def _patch_reader(monkeypatch, reader: FakeReader) -> list:
    """`open_video` hands out `reader`; -> the list of what it was asked to open."""
    opened: list = []

    def fake_open(source, timeout=None):
        opened.append((source, timeout))
        return reader

    monkeypatch.setattr(predictor_module, "open_video", fake_open)
    return opened


def test_a_stream_faster_than_the_model_drops_frames_and_stays_live(monkeypatch):
    """200 frames at 200 fps (1 s) into a model that takes 20 ms a frame (50 fps): about one frame in four is
    predicted, always the newest, and no result is more than a few model calls behind the source, instead of
    falling further behind with each frame."""
    reader = FakeReader(200, interval=0.005)
    opened = _patch_reader(monkeypatch, reader)
    model = SlowModel(delay=0.02)
    predictor = Predictor(model)
    seen: list[tuple[int, float]] = []  # (frame index, how long after the source sent it its result came)
    for r in predictor.predict_video("udp://127.0.0.1:9/cam", score_threshold=0.0):
        seen.append((r.frame, time.monotonic() - reader.due(r.frame)))
        assert r.path is None and r.source == "udp://127.0.0.1:9/cam" and len(r) == 1
        assert int(r.image[0, 0, 0]) == r.frame % 256  # the result is of the frame it says
    ((source, timeout),) = opened
    assert isinstance(source, LiveSource) and source.kind == "url" and timeout is None  # the default: STREAM_TIMEOUT
    frames = [f for f, _ in seen]
    assert frames == sorted(set(frames)) and frames[-1] == 199  # in order, and the newest frame is the last one
    dropped = 200 - len(frames)
    assert dropped >= 100, f"only {dropped} of 200 frames dropped for a model 4x slower than the source"
    latency = max(lag for _, lag in seen)
    # a frame waits at most for the call in progress and its own: 2 x 20 ms, plus scheduling on a busy machine
    assert latency < 0.3, f"a result came {latency:.3f} s after its frame"
    assert reader.closed


def test_every_frame_keeps_them_all_and_falls_behind(monkeypatch):
    """every_frame=True: all 60 frames (sent in 0.12 s) in order, through a model that needs 0.6 s for them: the
    last result comes long after the source sent its frame (what the default avoids)."""
    reader = FakeReader(60, interval=0.002)
    _patch_reader(monkeypatch, reader)
    predictor = Predictor(SlowModel(delay=0.02))
    frames, lag = [], 0.0
    for r in predictor.predict_video("udp://127.0.0.1:9/cam", every_frame=True, batch_size=2):
        frames.append(r.frame)
        lag = time.monotonic() - reader.due(r.frame)
        assert int(r.image[0, 0, 0]) == r.frame
    assert frames == list(range(60))
    assert lag > 0.25, f"the last frame's result came {lag:.3f} s after it"


def test_a_source_with_an_end_gives_every_frame_and_drop_can_be_asked(monkeypatch):
    """A recording (FFmpeg knows its end: a file, a URL with a length) keeps every frame by default; every_frame=False
    drops on it too; max_frames stops early and closes the source."""
    _patch_reader(monkeypatch, FakeReader(30, ends=True))
    predictor = Predictor(SlowModel(delay=0.002))
    assert [r.frame for r in predictor.predict_video("http://127.0.0.1:9/clip.ts")] == list(range(30))
    reader = FakeReader(30, ends=True)
    _patch_reader(monkeypatch, reader)
    assert [r.frame for r in predictor.predict_video("clip.mp4", max_frames=4, batch_size=3)] == [0, 1, 2, 3]
    assert reader.closed
    reader = FakeReader(100, interval=0.002, ends=True)
    _patch_reader(monkeypatch, reader)
    frames = [r.frame for r in predictor.predict_video("clip.mp4", every_frame=False)]
    assert frames[-1] == 99 and len(frames) < 100


def test_frame_feed_counts_what_it_drops():
    """Every frame decoded is either handed out, dropped (counted), or still held when the loop stops."""
    reader = FakeReader(300, interval=0.001)
    frames = FrameBatches(reader, batch_size=3, drop=True)
    taken: list[int] = []
    for batch in frames:
        assert 1 <= len(batch) <= 3
        taken += [i for i, _ in batch]
        time.sleep(0.01)
    assert frames.feed is not None and frames.read == 300
    assert frames.taken == len(taken) and frames.dropped == 300 - len(taken) > 0
    assert taken == sorted(set(taken)) and taken[-1] == 299
    # without drop: nothing lost, in order, in full batches but the last
    frames = FrameBatches(FakeReader(10), batch_size=4, threaded=True)
    assert [[i for i, _ in b] for b in frames] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and frames.dropped == 0


def test_only_the_frames_kept_are_converted_to_rgb():
    """A live reader with `decoded()` (PyAV's frames, as `VideoReader` has) is read through it, and only the frames
    handed out pay for the RGB conversion; the dropped ones cost their decoding only."""

    class Decoded:
        converted = 0

        def __init__(self, n: int):
            self.n = n

        def to_ndarray(self, format: str) -> np.ndarray:
            assert format == "rgb24"
            Decoded.converted += 1
            return np.full((4, 4, 3), self.n % 256, np.uint8)

    class PyAVLike(FakeReader):
        def decoded(self):
            for n, _ in enumerate(super().__iter__()):
                yield Decoded(n)

    frames = FrameBatches(PyAVLike(200, interval=0.001), drop=True)
    taken = []
    for batch in frames:
        taken += [(i, int(f[0, 0, 0])) for i, f in batch]
        time.sleep(0.01)
    assert all(i % 256 == v for i, v in taken) and frames.dropped > 100
    assert Decoded.converted == len(taken) == 200 - frames.dropped


def test_a_reader_error_comes_after_the_frames_before_it():
    class Failing(FakeReader):
        def __iter__(self):
            yield from super().__iter__()
            raise FastInstError(f"{self.name}: no data for 10 s (timeout)")

    feed = FrameFeed(Failing(3), depth=8)
    got = []
    with pytest.raises(FastInstError, match="no data for 10 s"):
        while (frame := feed.next()) is not None:
            got.append(frame)
    assert len(got) == 3
    feed.close()


# ---------------------------------------------------------------------------------------------------------------------
# The Python API takes what the CLI takes
# ---------------------------------------------------------------------------------------------------------------------


def test_camera_indices_reach_the_camera(monkeypatch):
    """`predict_video(0)` (a TypeError before) opens camera 0 as `fastinst predict 0` does; `stream(0)` too."""
    _patch_reader(monkeypatch, FakeReader(3))
    predictor = Predictor(SlowModel())
    opened = _patch_reader(monkeypatch, FakeReader(3))
    assert [r.frame for r in predictor.predict_video(0, every_frame=True)] == [0, 1, 2]
    assert [r.frame for r in predictor.stream(np.int64(0), every_frame=True)] == [0, 1, 2]
    assert [o[0] for o in opened] == [parse_source("0")] * 2
    assert opened[0][0].kind == "camera"
    with pytest.raises(FastInstError, match=r"^camera 0.*: is a live source \(camera\), one result per frame"):
        predictor.predict(0)
    with pytest.raises(FastInstError, match="is not a video source"):
        predictor.predict_video([0])


def test_a_missing_camera_is_one_line():
    if Path("/dev/video7").exists():
        pytest.skip("this machine has a /dev/video7")
    pytest.importorskip("av")
    predictor = Predictor(SlowModel())
    with pytest.raises(FastInstError, match=r"^camera 7 \(/dev/video7\): cannot open the video"):
        next(iter(predictor.predict_video(7)))


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """http://127.0.0.1:PORT/ serving photo.png, notes.png (text, not an image), /private/photo.png (needs basic
    auth user:pw) and /slow.png (answers nothing for 3 s)."""
    folder = tmp_path_factory.mktemp("web")
    photo = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(photo).save(folder / "photo.png")
    (folder / "notes.png").write_text("not an image")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/slow.png":
                time.sleep(3)
                return
            if self.path.startswith("/private/"):
                if self.headers.get("Authorization") != "Basic dXNlcjpwdw==":  # user:pw
                    self.send_error(401)
                    return
                self.path = self.path.removeprefix("/private")
            return super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", photo, folder
    server.shutdown()
    server.server_close()


def test_images_by_url(web):
    base, photo, folder = web
    predictor = Predictor(SlowModel())
    (r,) = predictor.predict(f"{base}/photo.png?size=full")
    assert np.array_equal(r.image, photo) and r.path is None and r.source == f"{base}/photo.png?size=full"
    assert r.to_coco(1)[0]["file_name"] == f"{base}/photo.png?size=full"
    many = predictor.predict([folder / "photo.png", f"{base}/photo.png"], batch_size=2)
    assert [m.path for m in many] == [folder / "photo.png", None] and np.array_equal(many[1].image, photo)
    (private,) = predictor.predict(f"http://user:pw@{base.removeprefix('http://')}/private/photo.png")
    assert np.array_equal(private.image, photo) and private.source is not None and "pw" not in private.source
    with pytest.raises(FastInstError) as e:
        predictor.predict(f"{base}/missing.png")
    assert str(e.value) == f"{base}/missing.png: HTTP 404 File not found"
    with pytest.raises(FastInstError, match=r"^http://127\.0\.0\.1:\d+/notes\.png: not an image file"):
        predictor.predict(f"{base}/notes.png")
    start = time.monotonic()
    with pytest.raises(FastInstError) as e:
        predictor.predict(f"{base}/slow.png", timeout=0.5)
    assert str(e.value) == f"{base}/slow.png: no data for 0.5 s (timeout)" and time.monotonic() - start < 2.5
    with pytest.raises(FastInstError, match=r"is an image URL; use Predictor\.predict"):
        predictor.predict_video(f"{base}/photo.png")
    with pytest.raises(FastInstError, match=r"rtsp://h/live: is a live source \(url\)"):
        predictor.predict("rtsp://h/live")


def test_json_list_writer_is_valid_after_every_add_and_replaces_only_at_the_end(tmp_path):
    """--save-json's file: entries go to the temporary name as they come, a complete JSON list after each add (a
    killed run leaves a readable file there); the final name is only touched by close(), in one rename, and abort()
    leaves an earlier file as it was."""
    from fastinst.engine.writers import JsonListWriter

    path = tmp_path / "predictions.json"
    path.write_text('["an earlier run"]')
    writer = JsonListWriter(path)
    assert json.loads(writer.tmp.read_text()) == []
    writer.add([])
    for n in range(3):
        writer.add([{"frame": n, "k": k} for k in range(2)])
        assert json.loads(writer.tmp.read_text()) == [{"frame": f, "k": k} for f in range(n + 1) for k in range(2)]
        assert json.loads(path.read_text()) == ["an earlier run"]
    assert writer.count == 6 and writer.close() == path and not writer.tmp.exists()
    assert len(json.loads(path.read_text())) == 6 and len(path.read_text().splitlines()) == 8  # "[", 6, "]"
    with pytest.raises(RuntimeError), JsonListWriter(path) as failing:
        failing.add([{"x": 1}])
        raise RuntimeError("the run failed")
    assert len(json.loads(path.read_text())) == 6 and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_url_without_an_image_extension_is_a_stream():
    predictor = Predictor(SlowModel())
    with pytest.raises(FastInstError, match=r"^https://h/photo: has no image extension .* read as a video stream"):
        predictor.predict("https://h/photo")
