"""The state behind `fastinst app`'s page: the model choices, a small cache of loaded models, the recent results on
disk and the limits, and the heavy part of one request (`App.predict_file`: decode, network, masks, overlay, PNG and
COCO encodings), which runs one request at a time (`App.gate`) with one full-size mask in memory at a time
(`engine/compact.py`).

The routes and the server that use it are `engine/app.py`.
"""

from __future__ import annotations

import gc
import json
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_SCORE_THRESHOLD
from ..errors import FastInstError
from ..log import say
from .serving import Gate

DEFAULT_MAX_UPLOAD = 40 * 1024 * 1024  # bytes
DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo; larger images are refused from their header
MAX_DETECTIONS = 100


@dataclass(frozen=True)
class Choice:
    """One entry of the page's model select: a variant (name, alias or YAML) and its weights (a checkpoint path given
    when the server started, or "official")."""

    model: str | None
    weights: str | None
    label: str


def default_choices(model: str | None, weights: list[str]) -> list[Choice]:
    """The page's model choices: each `--weights` with `--model` (the first is the default), then every published
    variant with its official weights (downloaded into the cache the first time it is chosen)."""
    from ..config import ALIASES, PUBLISHED, canonical_name, get_config

    choices = []
    for w in weights:
        if w == "official":
            label = f"{model} · official weights"
        else:
            label = f"{Path(w).name}" + (f" ({model})" if model else "")
        choices.append(Choice(model, w, label))
    alias = {v: k for k, v in ALIASES.items()}
    start = {(canonical_name(c.model), c.weights) for c in choices if c.model and c.weights == "official"}
    for name in PUBLISHED:
        if (name, "official") not in start and get_config(name).weights_url:
            choices.append(Choice(name, "official", f"{alias.get(name, name)} · official weights (download)"))
    return choices


class ModelUnavailable(FastInstError):
    """A model choice that could not be loaded (its message is remembered and repeated without a new attempt)."""


class ResultStore:
    """Recent results on disk, in a private temporary folder: the newest `keep` results within `keep_bytes`."""

    def __init__(self, keep: int, keep_bytes: int):
        self.root = Path(tempfile.mkdtemp(prefix="fastinst-app-results-"))  # mode 0700
        self.keep, self.keep_bytes = max(1, keep), keep_bytes
        self._items: OrderedDict[str, tuple[str, int]] = OrderedDict()  # id -> (upload name, bytes)
        self._lock = threading.Lock()

    def new(self) -> tuple[str, Path]:
        rid = f"r{secrets.token_hex(8)}"  # not guessable: with --host 0.0.0.0 one user cannot fetch another's
        folder = self.root / rid
        folder.mkdir()
        return rid, folder

    def add(self, rid: str, name: str) -> None:
        size = sum(f.stat().st_size for f in (self.root / rid).iterdir())
        with self._lock:
            self._items[rid] = (name, size)
            total = sum(s for _, s in self._items.values())
            while len(self._items) > 1 and (len(self._items) > self.keep or total > self.keep_bytes):
                old, (_, old_size) = self._items.popitem(last=False)
                total -= old_size
                shutil.rmtree(self.root / old, ignore_errors=True)

    def open(self, rid: str, file: str):
        """-> (the open file, the upload's name), or None when the result is no longer kept."""
        with self._lock:
            if rid not in self._items:
                return None
            return open(self.root / rid / file, "rb"), self._items[rid][0]  # readable even if removed next

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class App:
    """The state behind the page: the model choices, a small cache of loaded models, recent results, the limits.

    `loaded` may hand over the Predictor of choice 0, already built (so a bad start fails before the server opens).
    Models are loaded on first use and at most `cache_size` stay in memory (least recently used leaves first)."""

    def __init__(
        self,
        choices: list[Choice],
        device: str = "auto",
        dtype: str = "auto",
        backend: str = "torch",
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_upload: int = DEFAULT_MAX_UPLOAD,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        loaded: Any = None,
        cache_size: int = 2,
        keep_results: int = 500,
        keep_bytes: int = 2 << 30,
        waiting: int = 32,
        log=None,
    ):
        if not choices:
            raise FastInstError("fastinst app: no model to serve; pass --model NAME and --weights PATH|official")
        self.choices = choices
        self.device, self.dtype, self.backend = device, dtype, backend
        self.score_threshold = score_threshold
        self.max_upload, self.max_pixels = max_upload, max_pixels
        self.cache_size = max(1, cache_size)
        self.gate = Gate(waiting)
        self.results = ResultStore(keep_results, keep_bytes)
        self.models: OrderedDict[int, Any] = OrderedDict()
        if loaded is not None:
            self.models[0] = loaded
        self.failed: dict[int, str] = {}  # choice -> why it could not be loaded
        self.seconds = 1.0  # the last heavy section's duration, for Retry-After
        self._last_image_id = 0
        self._id_lock = threading.Lock()
        self.log = log or say

    # -- the model -------------------------------------------------------------------------------------------------

    def predictor(self, index: int, retry: bool = False):
        """The Predictor of choice `index`, loading it (and dropping the least recently used) if needed; a choice
        that failed to load raises its `ModelUnavailable` again without a new attempt, unless `retry`. Call in the
        heavy section."""
        if index in self.models:
            self.models.move_to_end(index)
            return self.models[index]
        if index in self.failed and not retry:
            raise ModelUnavailable(self.failed[index])
        from ..factory import load_backend
        from .predictor import Predictor

        choice = self.choices[index]
        while len(self.models) >= self.cache_size:
            self.models.popitem(last=False)
            gc.collect()
            _empty_device_cache()
        self.log(f"loading {choice.label}")
        try:
            model = load_backend(self.backend, choice.model, choice.weights, self.device, dtype=self.dtype)
        except FastInstError as e:
            self.failed[index] = one_line(e)
            self.log(f"{choice.label}: {self.failed[index]}")
            raise ModelUnavailable(self.failed[index]) from None
        self.failed.pop(index, None)
        self.models[index] = Predictor(model, dtype=self.dtype)
        self.log(f"loaded {choice.label}: {self.models[index].describe()}")
        return self.models[index]

    def info(self) -> dict:
        return {
            "models": [
                {"id": i, "label": c.label, **({"error": self.failed[i]} if i in self.failed else {})}
                for i, c in enumerate(self.choices)
            ],
            "default": 0,
            "threshold": self.score_threshold,
            "max_upload": self.max_upload,
            "max_pixels": self.max_pixels,
        }

    def check(self, model: int, threshold: float) -> None:
        if not 0 <= model < len(self.choices):
            raise FastInstError(
                f"model choice {model}: there are {len(self.choices)} choices (0-{len(self.choices) - 1})"
            )
        if not 0.0 <= threshold <= 1.0:
            raise FastInstError(f"score threshold {threshold:g}: must be between 0 and 1")

    def retry_after(self) -> int:
        return int(min(600, max(1, round(self.gate.admitted() * self.seconds))))

    def image_id(self) -> int:
        """A new COCO image id: the upload's time in milliseconds since 1970, unique (and increasing) per upload."""
        with self._id_lock:
            self._last_image_id = max(self._last_image_id + 1, int(time.time() * 1000))
            return self._last_image_id

    # -- one image ---------------------------------------------------------------------------------------------------

    def predict_file(self, path: Path, name: str, model: int, threshold: float, retry: bool = False) -> dict:
        """The heavy section for the upload at `path` (call between `gate.wait` and `gate.finish`): decode it, run
        choice `model` at `threshold`, draw and keep the downloads -> the JSON answer."""
        from ..data.images import read_image
        from ..visualize import instance_colour
        from . import compact

        self.check(model, threshold)
        started = time.perf_counter()
        predictor = self.predictor(model, retry)
        try:
            image = read_image(path, max_pixels=self.max_pixels)
        except FastInstError as e:
            raise FastInstError(str(e).replace(str(path), name)) from None
        path.unlink(missing_ok=True)
        start = time.perf_counter()
        found = compact.find_instances(predictor, image, threshold, MAX_DETECTIONS)
        elapsed = time.perf_counter() - start
        height, width = int(image.shape[0]), int(image.shape[1])
        image_id = self.image_id()
        rid, folder = self.results.new()
        compact.draw_overlay(image, found, predictor.names)
        compact.write_png(folder / "overlay.png", image)
        del image
        entries = compact.coco_entries(found, predictor.names, predictor.category_ids, image_id, name)
        (folder / "coco.json").write_bytes(json.dumps(entries, ensure_ascii=False).encode())
        self.results.add(rid, name)
        ids = list(predictor.category_ids or range(1, len(predictor.names) + 1))
        instances = [
            {
                "class": predictor.names[inst.label],
                "category_id": ids[inst.label],
                "score": round(inst.score, 4),
                "box": [float(v) for v in inst.box],
                "area": inst.area,
                "color": list(instance_colour(i)),
            }
            for i, inst in enumerate(found)
        ]
        self.seconds = time.perf_counter() - started
        self.log(f"{name}: {len(instances)} instances (score >= {threshold:g}) in {elapsed * 1000:.0f} ms")
        return {
            "id": rid,
            "image_id": image_id,
            "name": name,
            "width": width,
            "height": height,
            "model": self.choices[model].label,
            "time_ms": round(elapsed * 1000, 1),
            "instances": instances,
            "overlay": f"/api/results/{rid}/overlay.png",
            "coco": f"/api/results/{rid}/coco.json",
        }

    def close(self) -> None:
        self.results.close()


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    text = str(e).strip()
    return " ".join(text.split()) if text else type(e).__name__
