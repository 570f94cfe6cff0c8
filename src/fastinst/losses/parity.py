"""Training-mode parity with the official implementation's recorded fixture (`train.*` keys of reference.npz).

`check_train_parity(fixture_dir, model)` rebuilds the fixture's training batch (resized images, GT masks and labels),
replays the recorded `torch.rand` draws through `model(batch, rand=...)`, and compares the unweighted and weighted
losses, every recorded matching, and the query locations. The model must already hold the fixture's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .points import ReplayRand

__all__ = ["TrainRow", "check_train_parity", "fixture_batch", "fixture_replay"]


@dataclass
class TrainRow:
    name: str
    diff: float
    scale: float
    ok: bool
    tol: float = 0.0
    note: str = ""

    def format(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        return f"{self.name:<46} {self.diff:>11.3e} {self.scale:>11.3e} {self.tol:>10.1e}  {verdict}  {self.note}"


def _unpack_masks(npz, prefix: str) -> np.ndarray:
    shape = tuple(int(s) for s in npz[prefix + "_shape"])  # (N, h, w)
    count = int(np.prod(shape[1:]))
    if shape[0] == 0:
        return np.zeros(shape, dtype=bool)
    return np.unpackbits(npz[prefix + "_packbits"], axis=1, count=count).reshape(shape).astype(bool)


def fixture_batch(npz) -> list[dict]:
    """The training batch: resized CHW uint8 images, original height/width, GT labels and masks (resized size)."""
    batch = []
    i = 0
    while f"input.{i}.resized" in npz.files:
        resized = npz[f"input.{i}.resized"]  # (h, w, 3) uint8
        original = npz[f"input.{i}.original"]
        masks = torch.from_numpy(_unpack_masks(npz, f"train.gt.{i}.masks"))  # (N, h, w) bool
        batch.append(
            {
                "image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))),
                "height": int(original.shape[0]),
                "width": int(original.shape[1]),
                "instances": {"labels": torch.from_numpy(npz[f"train.gt.{i}.labels"]).long(), "masks": masks},
            }
        )
        i += 1
    return batch


def fixture_replay(npz) -> ReplayRand:
    """The recorded draws `train.rand.{n}.value` in order n = 0, 1, ..."""
    draws, roles = [], []
    while f"train.rand.{len(draws)}.value" in npz.files:
        n = len(draws)
        draws.append(torch.from_numpy(npz[f"train.rand.{n}.value"]))
        roles.append(str(npz[f"train.rand.{n}.role"]))
    return ReplayRand(draws, roles)


def _compare(name: str, ours, ref: np.ndarray, rel: float) -> TrainRow:
    ours = np.asarray(ours.detach().double().cpu() if isinstance(ours, torch.Tensor) else ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return TrainRow(name, float("inf"), 0.0, False, 0.0, f"shape {ours.shape} vs {ref.shape}")
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    diff = float(np.abs(ours - ref).max()) if ref.size else 0.0
    tol = rel * max(scale, 1e-12)
    return TrainRow(name, diff, scale, diff <= tol, tol)


def _compare_matching(name: str, ours: tuple[torch.Tensor, torch.Tensor] | None, ref: np.ndarray) -> TrainRow:
    if ours is None:
        return TrainRow(name, float("inf"), 0.0, False, 0.0, "not produced")
    got = np.stack([np.asarray(ours[0].cpu()), np.asarray(ours[1].cpu())]).astype(np.int64).reshape(2, -1)
    same = got.shape == ref.shape and bool((got == ref).all())
    note = "identical" if same else f"ours {got.tolist()} vs ref {ref.tolist()}"[:200]
    return TrainRow(name, 0.0 if same else 1.0, 0.0, same, 0.0, note)


def check_train_parity(
    fixture_dir: str | Path, model: torch.nn.Module, rel: float = 1e-5, rel_locations: float = 1e-3
) -> list[TrainRow]:
    """Run the training forward with the recorded draws and compare with `train.*`. -> one row per checked item."""
    fixture_dir = Path(fixture_dir)
    npz = np.load(fixture_dir / "reference.npz")
    if "train.loss.loss_ce" not in npz.files:
        return []
    batch = fixture_batch(npz)
    replay = fixture_replay(npz)
    captured: dict = {}

    def keep_outputs(_module, _inputs, out):
        captured["outputs"] = out

    predictor = model.sem_seg_head.predictor
    handle = predictor.register_forward_hook(keep_outputs)
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            weighted = model(batch, rand=replay)
    finally:
        handle.remove()
        model.train(was_training)
    weights = model.criterion.weight_dict
    rows = [
        TrainRow(
            "train.rand (draws consumed)",
            float(replay.remaining),
            float(len(replay.draws)),
            replay.remaining == 0,
            0.0,
            f"{replay.position}/{len(replay.draws)} used",
        )
    ]
    for key in npz.files:
        if key.startswith("train.loss."):
            name = key[len("train.loss.") :]
            if name not in weighted:
                rows.append(TrainRow(key, float("inf"), 0.0, False, 0.0, "missing"))
                continue
            rows.append(_compare(key, weighted[name] / weights[name], npz[key], rel))
        elif key.startswith("train.loss_weighted."):
            name = key[len("train.loss_weighted.") :]
            if name in weighted:
                rows.append(_compare(key, weighted[name], npz[key], rel))
    extra = sorted(set(weighted) - {k[len("train.loss.") :] for k in npz.files if k.startswith("train.loss.")})
    if extra:
        rows.append(TrainRow("train.loss (extra keys)", float(len(extra)), 0.0, False, 0.0, ", ".join(extra)))
    matchings = dict(getattr(model.criterion, "last_matchings", {}))
    matchings.update(getattr(model, "last_matching", {}) or {})
    for key in sorted(k for k in npz.files if k.startswith("train.match.")):
        output, i = key[len("train.match.") :].rsplit(".", 1)
        per_image = matchings.get(output)
        ours = per_image[int(i)] if per_image is not None and int(i) < len(per_image) else None
        rows.append(_compare_matching(key, ours, npz[key]))
    if "train.query_locations" in npz.files:
        locations = (captured.get("outputs") or {}).get("query_locations")
        if locations is None:
            rows.append(TrainRow("train.query_locations", float("inf"), 0.0, False, 0.0, "not produced"))
        else:
            rows.append(_compare("train.query_locations", locations, npz["train.query_locations"], rel_locations))
    return rows
