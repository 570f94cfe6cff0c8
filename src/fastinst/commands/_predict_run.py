"""The loop of one `fastinst predict` call (`PredictRun`): the images in batches, image URLs, video files, cameras
and streams through the `Predictor`, each result saved as it comes (overlay PNG / MP4 under a name no input has, and
with --save-json its COCO entries streamed to disk), with the counters and image ids the summary and the JSON need.

`commands/predict.py` parses the command line, builds the predictor and hands the sources to a `PredictRun`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.sources import LiveSource, StopSignals
from ..errors import FastInstError


def _image_ids(paths: list[Path]) -> dict[Path, int] | None:
    """COCO-style ids from numeric stems (000000397133.jpg -> 397133) when every image has a distinct one."""
    ids = {p: int(p.stem) for p in paths if p.stem.isdigit()}
    return ids if len(ids) == len(paths) and len(set(ids.values())) == len(ids) else None


class PredictRun:
    """State of one `fastinst predict` call: counters, output names, the streamed JSON entries, image ids."""

    def __init__(
        self,
        args: argparse.Namespace,
        predictor,
        out: Path,
        progress: bool,
        index: Any,
        inputs: list[Path],
        json_writer: Any = None,
    ):
        self.args, self.predictor, self.out = args, predictor, out
        self.used: set[Path] = {p.resolve() for p in inputs}  # overlays never take an input's path
        self.json = json_writer  # a JsonListWriter with --save-json: entries go to disk as they come
        self.images = self.frames = self.instances = self.skipped = self.dropped = 0
        self.videos: list[dict] = []  # per video / camera / stream: {source, frames, dropped, live}
        self.index = index  # ImageIndex of --data / a COCO --classes json, or None
        self.next_id = index.max_id + 1 if index is not None else 1
        self.unmatched: list[Path] = []
        self.taken: dict[int, Path] = {}  # dataset image id -> the file that took it
        self.progress = progress

    def output(self, name: str) -> Path:
        """`out/name`, or `stem_1`, `stem_2`... when an input or an earlier output of this run has that path."""
        path = self.out / name
        candidate, n = path, 0
        while candidate.resolve() in self.used:
            n += 1
            candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        self.used.add(candidate.resolve())
        return candidate

    def skip(self, path: Path | str, reason: str, bar=None) -> None:
        line = f"skipped {path}: {reason}"
        if bar is not None:
            bar.write(line)
        else:
            print(line, flush=True)
        self.skipped += 1

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def image_id(self, path: Path | str, stems: dict[Path, int] | None) -> int:
        if self.index is None:
            return stems[path] if stems and isinstance(path, Path) else self._new_id()
        found = self.index.find(str(path))
        if found is not None and self.taken.setdefault(found, Path(path)) == Path(path):
            return found
        self.unmatched.append(Path(path))  # not in the dataset, or its image was already taken by another file
        return self._new_id()

    def save_json(self, entries: list[dict]) -> None:
        if self.json is not None:
            self.json.add(entries)

    def images_batch(self, batch: list[tuple[np.ndarray, Path]], stems: dict[Path, int] | None) -> None:
        a = self.args
        images, paths = [im for im, _ in batch], [p for _, p in batch]
        results = self.predictor.predict_batch(images, paths, a.score_threshold, a.max_dets)
        for r, path in zip(results, paths, strict=True):
            r.save(self.output(f"{path.stem}.png"))
            if a.save_json:
                self.save_json(r.to_coco(self.image_id(path, stems)))
            self.images += 1
            self.instances += len(r)

    def run_images(self, files: list[tuple[Path, bool]]) -> None:
        from tqdm import tqdm

        from ..data.images import read_image

        stems = _image_ids([p for p, _ in files]) if self.args.save_json and self.index is None else None
        if stems:
            self.next_id = max(stems.values()) + 1
        bar = tqdm(total=len(files), unit="img", desc="predict", disable=not self.progress)
        batch: list[tuple[np.ndarray, Path]] = []
        for path, lenient in files:
            try:
                batch.append((read_image(path), path))
            except FastInstError as e:
                if not lenient:
                    raise
                self.skip(path, str(e).removeprefix(f"{path}: "), bar)
            if len(batch) == self.args.batch_size:
                self.images_batch(batch, stems)
                batch = []
            bar.update(1)
        if batch:
            self.images_batch(batch, stems)
        bar.close()

    def run_image_url(self, source: LiveSource) -> None:
        """An http(s) image URL: downloaded (`--timeout`), predicted, its overlay `<stem>.png`; JSON entries name
        the URL (password hidden) and take a `--data` image's id when its path names one (`.../val2017/x.jpg`)."""
        from urllib.parse import urlsplit

        from ..engine.sources import fetch_image

        a = self.args
        image = fetch_image(source, a.timeout)
        (r,) = self.predictor.predict_batch([image], None, a.score_threshold, a.max_dets)
        r.source = source.name
        r.save(self.output(f"{source.stem}.png"))
        if a.save_json:
            where = urlsplit(source.url).path if self.index is not None else source.name
            self.save_json(r.to_coco(self.image_id(where, None)))
        self.images += 1
        self.instances += len(r)

    def run_video(self, path: Path, lenient: bool) -> None:
        from ..engine.video import VideoReader

        try:
            reader = VideoReader(path)
        except FastInstError as e:
            if not lenient:
                raise
            return self.skip(path, str(e).removeprefix(f"{path}: "))
        try:
            self.frames_of(reader, str(path), f"{path.stem}.mp4", device=False)
        except FastInstError as e:
            if not lenient:
                raise
            self.skip(path, str(e).removeprefix(f"{path}: "))

    def run_live(self, source: LiveSource) -> None:
        from ..engine.video import open_video

        timeout = self.args.timeout if source.kind == "url" else None
        self.frames_of(open_video(source, timeout), source.name, f"{source.stem}.mp4", device=True)

    def frames_of(self, reader, name: str, overlay: str, device: bool) -> None:
        """Predict the frames of an opened `VideoReader` (up to --max-frames) into an overlay video, each batch going
        through the model as soon as it is read, and each result's JSON entries to disk.

        A source without a known end (`reader.ends`: a camera, a live stream) is live: unless --every-frame, frames
        that arrive while the model is busy are dropped (counted; the overlay keeps the source's timing, each overlay
        held until the next, and the entries' `frame` is the index in the source). Cameras and streams (`device`)
        are read in a thread, and end at their end, on Ctrl-C / SIGTERM, or on a read error after some frames; their
        overlay (and JSON entries) then hold every frame predicted, and the overlay is complete under its final
        name. For a file, a decoding error or an interrupt discards the overlay."""
        from tqdm import tqdm

        from ..engine.sources import FrameBatches
        from ..engine.writers import VideoWriter

        a = self.args
        live = not reader.ends
        drop = live and not a.every_frame
        try:
            writer = VideoWriter(self.output(overlay), reader.rate)
        except BaseException:
            reader.close()
            raise
        bar = tqdm(total=reader.frames, unit="frame", desc=Path(overlay).stem, disable=not self.progress)
        count = 0
        ended: str | None = None

        def predict(batch: list[tuple[int, np.ndarray]], frames: FrameBatches) -> None:
            nonlocal count
            results = self.predictor.predict_batch([f for _, f in batch], None, a.score_threshold, a.max_dets)
            for (index, _), r in zip(batch, results, strict=True):
                r.source, r.frame = name, index
                writer.write(r.plot(), index)
                if a.save_json:
                    self.save_json(r.to_coco(self._new_id()))
                count += 1
                self.frames += 1
                self.instances += len(r)
                bar.update(1)
            if drop:
                bar.set_postfix(dropped=frames.dropped, refresh=False)

        try:
            with StopSignals() if device else contextlib.nullcontext() as stop:
                frames = FrameBatches(
                    reader, a.batch_size, drop=drop, threaded=device, stop=stop, max_frames=a.max_frames
                )
                try:
                    for batch in frames:
                        predict(batch, frames)
                except FastInstError as e:
                    if not device or count == 0:
                        raise
                    ended = f"ended with an error: {str(e).removeprefix(f'{name}: ')}"
                finally:
                    frames.close()
                if stop is not None and stop.received:
                    ended = f"stopped by {stop.received}"
        except BaseException:
            writer.abort()
            bar.close()
            raise
        writer.close()
        bar.close()
        self.dropped += frames.dropped
        self.videos.append({"source": name, "frames": count, "dropped": frames.dropped, "live": live})
        if ended or frames.dropped:
            how = f"{ended} after {count} frames" if ended else f"{count} frames"
            lost = f" ({frames.dropped} dropped to keep up)" if frames.dropped else ""
            print(f"{name}: {how}{lost}; {writer.path} is complete", file=sys.stderr)
