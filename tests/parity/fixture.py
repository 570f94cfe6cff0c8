"""Reading a parity fixture (schema: the fixtures README; the in-repo compact one uses the same keys).

A fixture folder holds `keys.txt` (the official state-dict layout) and `reference.npz` (inputs, official outputs,
training losses and matchings). `open_fixture` loads it; `fixture_model` builds the variant its metadata names with
the synthetic weights; `eval_batch` / `train_batch` give the model inputs; `fixture_draws` the training forward's
`torch.rand` draws — stored ones, or for a compact fixture regenerated from the recorded torch seed and shapes (the
official forward seeded `torch.manual_seed(train_torch_seed)` right before it and drew nothing else).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastinst import build_model
from fastinst.config import canonical_name
from fastinst.losses.points import ReplayRand
from fastinst.model.preprocess import resize_image, resize_shape

from .weights import synthetic_weights

__all__ = ["Fixture", "eval_batch", "fixture_draws", "fixture_model", "open_fixture", "train_batch", "unpack_masks"]


@dataclass
class Fixture:
    path: Path
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def num_images(self) -> int:
        return len(self.meta["images"])

    @property
    def has_training(self) -> bool:
        return "train.loss.loss_ce" in self.arrays

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __contains__(self, key: str) -> bool:
        return key in self.arrays


def open_fixture(path: str | Path) -> Fixture:
    path = Path(path)
    npz_path = path / "reference.npz"
    if not npz_path.is_file() or not (path / "keys.txt").is_file():
        raise FileNotFoundError(f"{path}: not a fixture folder (needs keys.txt and reference.npz)")
    with np.load(npz_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return Fixture(path, arrays, json.loads(str(arrays["meta_json"])))


def fixture_weights(fx: Fixture) -> dict[str, torch.Tensor]:
    weights = synthetic_weights(fx.path / "keys.txt", int(fx.meta["seed"]))
    return {k: torch.from_numpy(v) for k, v in weights.items()}


def fixture_model(fx: Fixture) -> torch.nn.Module:
    """The fixture's variant with its synthetic weights (keys must equal keys.txt, in order), in eval mode."""
    model = build_model(canonical_name(fx.meta["config"]))
    weights = fixture_weights(fx)
    own = list(model.state_dict())
    if list(weights) != own:
        first = next((a, b) for a, b in itertools.zip_longest(weights, own) if a != b)
        raise AssertionError(f"{fx.path}: state-dict keys differ from keys.txt (first difference: {first})")
    model.load_state_dict(weights, strict=True)
    return model.eval()


def unpack_masks(fx: Fixture, prefix: str) -> np.ndarray:
    """`{prefix}_packbits` + `{prefix}_shape` -> bool (N, H, W)."""
    shape = tuple(int(s) for s in fx[prefix + "_shape"])
    if shape[0] == 0:
        return np.zeros(shape, dtype=bool)
    count = int(np.prod(shape[1:]))
    return np.unpackbits(fx[prefix + "_packbits"], axis=1, count=count).reshape(shape).astype(bool)


def resized_image(fx: Fixture, i: int) -> np.ndarray:
    """The official test resize of image i: stored when the fixture has it, else ours (checked equal elsewhere)."""
    if f"input.{i}.resized" in fx:
        return fx[f"input.{i}.resized"]
    original = fx[f"input.{i}.original"]
    variant = fx.meta["variant"]
    return resize_image(original, resize_shape(*original.shape[:2], variant["min_size_test"], variant["max_size_test"]))


def eval_batch(fx: Fixture, resized: list[np.ndarray] | None = None) -> list[dict]:
    """Model inputs: CHW uint8 of the resized images, with the original height/width."""
    batch = []
    for i in range(fx.num_images):
        image = resized[i] if resized is not None else resized_image(fx, i)
        original = fx[f"input.{i}.original"]
        batch.append(
            {
                "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "height": int(original.shape[0]),
                "width": int(original.shape[1]),
            }
        )
    return batch


def train_batch(fx: Fixture) -> list[dict]:
    """`eval_batch` plus each image's GT: labels (N,) and masks (N, h, w) at the resized, unpadded size."""
    batch = eval_batch(fx)
    for i, item in enumerate(batch):
        labels = torch.from_numpy(fx[f"train.gt.{i}.labels"]).long()
        item["instances"] = {"labels": labels, "masks": torch.from_numpy(unpack_masks(fx, f"train.gt.{i}.masks"))}
    return batch


def fixture_draws(fx: Fixture) -> ReplayRand:
    """The training forward's draws in call order: stored values, or regenerated from seed + stored shapes."""
    draws, roles = [], []
    regenerate = "train.rand.0.value" not in fx
    if regenerate:
        torch.manual_seed(int(fx.meta["train"]["train_torch_seed"]))
    n = 0
    while f"train.rand.{n}.role" in fx:
        roles.append(str(fx[f"train.rand.{n}.role"]))
        if regenerate:
            draws.append(torch.rand(*(int(s) for s in fx[f"train.rand.{n}.shape"])))
        else:
            draws.append(torch.from_numpy(fx[f"train.rand.{n}.value"]))
        n += 1
    return ReplayRand(draws, roles)
