"""Video inference keeps memory bounded (issue #16): `Predictor.predict_video` decodes one batch of frames at a time,
and post-processing upsamples to the frame's full size only the masks of queries that can still reach the score
threshold (never all the top-k pairs' masks). The 1920x1080 measurement is `benchmarks/predict_memory.py
--video-frames 20 200`."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import fastinst
import fastinst.engine.video as video_module
import fastinst.model.postprocess as postprocess
import fastinst.model.span_masks as span_masks
from fastinst.defaults import DEFAULT_SCORE_THRESHOLD
from fastinst.engine.predictor import Predictor

av = pytest.importorskip("av")

HEIGHT, WIDTH, FRAMES = 240, 320, 12


def _frames() -> Iterator[np.ndarray]:
    """A red square and a green disc moving over a grey gradient."""
    background = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    background[:] = np.linspace(40, 110, HEIGHT).astype(np.uint8)[:, None, None]
    yy, xx = np.ogrid[:60, :60]
    disc = (yy - 29.5) ** 2 + (xx - 29.5) ** 2 <= 30**2
    for i in range(FRAMES):
        frame = background.copy()
        frame[30:110, 10 + 15 * i : 90 + 15 * i] = (220, 40, 40)
        frame[150:210, 200 - 8 * i : 260 - 8 * i][disc] = (40, 200, 60)
        yield frame


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    try:
        av.codec.Codec("libx264", "w")
        x264 = True
    except (av.FFmpegError, ValueError):
        x264 = False  # PyAV without GPL codecs: MPEG-4 part 2
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264" if x264 else "mpeg4", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for frame in _frames():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def _demo(sharpen: bool) -> Predictor:
    """The demo model with random weights (seed 0): plain, its class probabilities stay under 0.3; sharpened (last
    class-head layer x16, last mask-embedding layer x8), several (query, class) pairs per frame pass 0.3."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="randomly initialised"):
        model = fastinst.load_model("fastinst-demo", device="cpu")
    if sharpen:
        last = re.compile(r"(class|mask)_embed_layers\.\d+\.layers\.2\.")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if last.search(name):
                    p.mul_(16.0 if "class_embed" in name else 8.0)
    return Predictor(model)


class PostprocessLog:
    """Per `postprocess.instances` call (one per frame): the (query, class) pairs whose class probability reaches the
    threshold, their distinct queries, and the distinct masks made at the frame's size (by `_full_size`, or by
    `span_masks.CellResize` when the network ran in bf16, the default on CPUs with bf16 hardware)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, threshold: float):
        self.calls: list[dict] = []
        select = postprocess.select

        def logged_select(pred_logits, k):
            scores, labels, queries = select(pred_logits, k)
            passing = scores >= threshold
            candidates = {"pairs": int(passing.sum()), "queries": int(queries[passing].unique().numel())}
            self.calls.append({**candidates, "rows": set(), "num_queries": int(pred_logits.shape[0])})
            return scores, labels, queries

        def logged_full_size(logits, *rest, **kw):
            out = _full_size(logits, *rest, **kw)
            # chunks are views of one (u, h8, w8) tensor: name each row by its storage and index, to count it once
            first = logits.storage_offset() // max(1, logits.stride(0))
            storage = logits.untyped_storage().data_ptr()
            self.calls[-1]["rows"].update((storage, first + i) for i in range(logits.shape[0]))
            assert out.shape[1:] == (HEIGHT, WIDTH)
            return out

        def logged_values(resize, indices, box, step):
            if step == 1:  # masks made at full size (not the sampled pixels of their scores)
                self.calls[-1]["rows"].update((id(resize), i) for i in indices)
            return cell_values(resize, indices, box, step)

        _full_size, cell_values = postprocess._full_size, span_masks.CellResize.values
        monkeypatch.setattr(postprocess, "select", logged_select)
        monkeypatch.setattr(postprocess, "_full_size", logged_full_size)
        monkeypatch.setattr(span_masks.CellResize, "values", logged_values)


@pytest.mark.parametrize(("sharpen", "batch_size"), [(False, 3), (True, 2)], ids=["random", "sharpened"])
def test_video_streams_frames_and_upsamples_only_passing_masks(clip, monkeypatch, sharpen, batch_size):
    predictor = _demo(sharpen)
    read: list[int] = []
    frames = video_module.VideoReader.__iter__

    def counted_frames(self):
        for frame in frames(self):
            read.append(1)
            yield frame

    monkeypatch.setattr(video_module.VideoReader, "__iter__", counted_frames)
    log = PostprocessLog(monkeypatch, DEFAULT_SCORE_THRESHOLD)

    results = predictor.predict_video(clip, batch_size=batch_size)  # default score threshold 0.3
    generator = inspect.isgenerator(results)
    assert generator and not read  # nothing decoded before the first result is asked for
    kept = []
    for j, r in enumerate(results):
        # lazy: when result j comes out, at most the frames of its own batch have been decoded
        assert j + 1 <= len(read) <= j + batch_size, f"result {j}: {len(read)} frames already read"
        assert r.masks.shape == (len(r), HEIGHT, WIDTH) and r.masks.dtype == bool
        assert np.all(r.scores >= DEFAULT_SCORE_THRESHOLD)
        kept.append(len(r))
    assert len(read) == len(kept) == FRAMES

    assert len(log.calls) == FRAMES  # one post-processing call per frame, in order
    for call, n in zip(log.calls, kept, strict=True):
        upsampled = len(call["rows"])
        seen = f"{upsampled} masks upsampled, {n} kept; {call['pairs']} pairs of {call['queries']} queries can pass"
        # a mask goes to full size only for a query with a pair whose class probability reaches the threshold: with
        # none, no mask at all (not the top-k pairs' masks); the kept instances are among those pairs
        assert upsampled <= call["queries"] <= call["num_queries"], seen
        assert n <= call["pairs"], seen
        if call["pairs"] == 0:
            assert upsampled == 0 and n == 0
    if sharpen:  # the hooks saw real work: instances kept, masks upsampled, fewer than the queries
        assert sum(kept) > 0 and all(len(c["rows"]) > 0 for c in log.calls)
        assert max(len(c["rows"]) for c in log.calls) < log.calls[0]["num_queries"]
