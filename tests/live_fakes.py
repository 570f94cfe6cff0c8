"""Fakes for the live-source tests (tests/engine/test_live_sources.py, tests/commands/test_predict_stream.py): a
reader that sends frames at a set rate, and a model with FastInst's detect() contract that takes a set time."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch


class FakeReader:
    """A source of `count` 16x16 frames, one every `interval` seconds (a camera or stream, `ends=False`); frame n is
    filled with n % 256 so that a result can be traced back to its frame."""

    def __init__(self, count: int, interval: float = 0.0, ends: bool = False, name: str = "fake://cam"):
        self.count, self.interval, self.ends, self.name = count, interval, ends, name
        self.rate, self.frames = 25.0, None
        self.start = 0.0
        self.closed = False

    def due(self, n: int) -> float:
        """When a live source sends frame n (a reader that is not kept up with makes it later, or, live, drops it)."""
        return self.start + n * self.interval

    def __iter__(self):
        self.start = start = time.monotonic()
        for n in range(self.count):
            delay = start + n * self.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield np.full((16, 16, 3), n % 256, np.uint8)

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SlowModel:
    """The detect() contract in `delay` seconds per call: `instances` instances per image (instance k: rows k.. of
    the top-left quarter), scores 0.9, 0.8, ...; `hook(calls)`, when given, is called at the start of each call."""

    names, category_ids = ["thing"], [1]

    def __init__(self, delay: float = 0.0, instances: int = 1, hook: Callable[[int], None] | None = None):
        self.delay, self.instances, self.hook = delay, instances, hook
        self.calls = 0

    def detect(self, images, score_threshold=0.0, max_detections=None):
        self.calls += 1
        if self.hook is not None:
            self.hook(self.calls)
        time.sleep(self.delay)
        out = []
        for im in images:
            h, w = im.shape[:2]
            n = self.instances
            masks = torch.zeros((n, h, w), dtype=torch.bool)
            for k in range(n):
                masks[k, min(k, h - 1) : max(1, h // 2), : max(1, w // 2)] = True
            out.append(
                {
                    "masks": masks,
                    "scores": torch.tensor([0.9 - 0.1 * k for k in range(n)]),
                    "labels": torch.zeros(n, dtype=torch.int64),
                    "queries": torch.arange(n),
                }
            )
        return out
