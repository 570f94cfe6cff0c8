"""A network stream whose server accepts the connection but never answers (or stops sending), or a UDP port nobody
sends to, fails in one line in our words, `URL: no data for N s (timeout)`, naming the URL without its password,
instead of FFmpeg's words for the interruption ("Invalid data found when processing input", "Immediate exit
requested"); the same from the Python API (`predict_video(url, timeout=...)`)."""

from __future__ import annotations

import dataclasses
import io
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from fastinst.cli import main
from fastinst.engine import sources
from fastinst.engine.sources import parse_source
from fastinst.engine.video import VideoReader
from fastinst.errors import FastInstError

av = pytest.importorskip("av")

TIMEOUT = 0.5


def _serve(reply: bytes | None) -> Iterator[int]:
    """A local TCP server on a free port that accepts every connection and then sends `reply` once the client has
    spoken (None: sends nothing, ever); connections stay open until the test ends. Yields the port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.05)  # so that the thread sees `done` (closing a socket does not end a blocked accept)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:  # the server was closed: the test is over
                return
            held.append(conn)
            if reply is not None:
                conn.settimeout(2.0)
                try:
                    conn.recv(65536)  # the request
                    conn.sendall(reply)
                except OSError:
                    pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join(timeout=2.0)
        server.close()
        for conn in held:
            conn.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    yield from _serve(None)


def _partial_ts() -> bytes:
    """An HTTP response with the first half of a small MPEG-TS video: enough to open it, not to reach its end."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = buf.getvalue()
    return b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\n\r\n" + data[: len(data) // 2]


def _open(url: str) -> VideoReader:
    """Open `url` as `fastinst predict` does (`parse_source`), with a short timeout."""
    source = parse_source(url)
    assert source is not None
    source = dataclasses.replace(source, timeout=(TIMEOUT, TIMEOUT))
    return VideoReader(
        source.url, format=source.format, options=source.options, timeout=source.timeout, name=source.name
    )


@pytest.mark.parametrize("scheme", ["rtsp", "http", "tcp"])
def test_a_server_that_never_answers_times_out_in_one_line(silent_port, scheme):
    url = f"{scheme}://admin:secret@127.0.0.1:{silent_port}/live"
    start = time.monotonic()
    with pytest.raises(FastInstError) as raised:
        _open(url)
    assert time.monotonic() - start < 5
    message = str(raised.value)
    name = f"{scheme}://admin:***@127.0.0.1:{silent_port}/live"
    assert message == f"{name}: no data for {TIMEOUT:g} s (timeout)"
    assert "secret" not in message and "Invalid data" not in message


def test_a_url_reader_without_a_name_hides_the_password(silent_port):
    with pytest.raises(
        FastInstError, match=r"^rtsp://u:\*\*\*@127\.0\.0\.1:\d+/x: no data for 0\.5 s \(timeout\)$"
    ) as e:
        VideoReader(f"rtsp://u:pw@127.0.0.1:{silent_port}/x", timeout=TIMEOUT)
    assert "pw" not in str(e.value)


def test_a_stream_that_stops_sending_times_out_waiting_for_the_next_frame():
    server = _serve(_partial_ts())
    port = next(server)
    try:
        reader = _open(f"http://127.0.0.1:{port}/live.ts")
        start = time.monotonic()
        with pytest.raises(FastInstError) as raised, reader:
            for _ in reader:
                pass
        assert time.monotonic() - start < 5
        assert str(raised.value) == f"http://127.0.0.1:{port}/live.ts: no data for {TIMEOUT:g} s (timeout)"
    finally:
        server.close()


def test_a_refused_connection_is_not_called_a_timeout():
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(FastInstError) as raised:
        _open(f"http://127.0.0.1:{port}/x")
    assert "cannot open the video" in str(raised.value) and "timeout" not in str(raised.value)


def test_predict_on_a_silent_stream_is_one_line(silent_port, demo_weights, tmp_path, capsys):
    out = tmp_path / "out"
    url = f"rtsp://admin:secret@127.0.0.1:{silent_port}/live"
    argv = ["predict", "--model", "fastinst-demo", "--weights", demo_weights, "--device", "cpu", "--output", str(out)]
    assert main([*argv, "--timeout", str(TIMEOUT), url]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: rtsp://admin:***@127.0.0.1:{silent_port}/live: no data for {TIMEOUT:g} s (timeout)"
    assert not out.exists() or not any(out.iterdir())


def _free_udp_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def test_a_udp_port_nobody_sends_to_times_out_in_our_words():
    """FFmpeg says "Immediate exit requested" when PyAV's timeout interrupts a UDP read; we say what happened."""
    url = f"udp://127.0.0.1:{_free_udp_port()}"
    start = time.monotonic()
    with pytest.raises(FastInstError) as raised:
        _open(url)
    assert time.monotonic() - start < 5
    assert str(raised.value) == f"{url}: no data for {TIMEOUT:g} s (timeout)"


def test_the_python_api_takes_stream_urls_with_the_same_timeouts(silent_port):
    """`predict_video("udp://...")` with no sender, and a server that never answers, end in the same one line (the
    default is 10 s, as for the CLI; `timeout=` sets it) instead of hanging."""
    from fastinst.engine.predictor import Predictor

    class Never:  # the model is never reached
        names, category_ids = ["thing"], [1]

        def detect(self, images, score_threshold=0.0, max_detections=None):
            raise AssertionError("no frame should arrive")

    predictor = Predictor(Never())
    assert sources.STREAM_TIMEOUT == (10.0, 10.0)
    for url in (
        f"udp://127.0.0.1:{_free_udp_port()}",
        f"tcp://127.0.0.1:{silent_port}",
        f"http://127.0.0.1:{silent_port}/x",
    ):
        start = time.monotonic()
        with pytest.raises(FastInstError) as raised:
            next(iter(predictor.predict_video(url, timeout=TIMEOUT)))
        assert time.monotonic() - start < 5, url
        assert str(raised.value) == f"{url}: no data for {TIMEOUT:g} s (timeout)"
        with pytest.raises(FastInstError, match=r"no data for 0\.5 s \(timeout\)$"):
            list(predictor.stream(url, timeout=TIMEOUT))
