"""The fixtures' deterministic synthetic weights, rebuilt from a `keys.txt` and a seed.

The official implementation produced every fixture with weights drawn by the rules the fixtures README documents:
numpy's legacy `RandomState` (its streams are frozen across numpy releases) seeded with
`(seed * 1_000_003 + crc32(name)) mod 2**32`, one draw per tensor scaled by the tensor's role, rounded through
float16. Re-deriving them here keeps the fixtures weight-free and means no code is ever run from a fixture folder.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_keys", "synthetic_weights"]


def read_keys(keys_txt: str | Path) -> list[tuple[str, tuple[int, ...], str]]:
    """`NAME<TAB>SHAPE<TAB>DTYPE` lines (SHAPE comma-separated, empty for scalars) -> [(name, shape, dtype)]."""
    rows = []
    for line in Path(keys_txt).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape, dtype = line.split("\t")
        rows.append((name, tuple(int(n) for n in shape.split(",") if n), dtype))
    return rows


def _role_draw(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """One tensor's float64 values: the role decides the distribution (first matching rule wins)."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("empty_weight"):  # class weights of the loss: 1 per class, eos 0.1; no random draw
        values = np.ones(shape)
        values[-1] = 0.1
        return values
    rng = np.random.RandomState((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32)
    if leaf == "running_mean":
        return rng.normal(0.0, 0.1, shape)
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, shape)
    if "meta_pos_embed" in name or "empty_query" in name:
        return rng.normal(0.0, 1.0, shape)
    fan_in = int(np.prod(shape[1:]))
    if "conv2_offset" in name:  # DCN offsets: large bias, tiny weight
        return rng.normal(0.0, 1.0, shape) if leaf == "bias" else rng.normal(0.0, 0.01 / np.sqrt(fan_in), shape)
    if len(shape) == 1:
        if leaf != "weight":  # every 1-D bias
            return rng.normal(0.0, 0.1, shape)
        last_norm_of_block = name.endswith((".conv3.norm.weight", ".bn3.weight"))
        return rng.uniform(0.1, 0.3, shape) if last_norm_of_block else rng.uniform(0.5, 1.5, shape)
    if name.startswith("sem_seg_head.predictor.transformer_") and name.endswith(("out_proj.weight", "linear2.weight")):
        gain = 0.1
    elif ".class_embed_layers." in name and name.endswith("layers.2.weight"):
        gain = 4.0
    else:
        gain = np.sqrt(2.0) if len(shape) == 4 else 1.0
    values = rng.normal(0.0, gain / np.sqrt(fan_in), shape)
    if ".mask_embed_layers." in name and leaf == "weight":
        values -= values.mean(axis=1, keepdims=True)
    return values


def synthetic_weights(keys_txt: str | Path, seed: int) -> dict[str, np.ndarray]:
    """{name: array} in keys.txt order; floats are float16-exact float32 except `empty_weight` (exact 0.1)."""
    out = {}
    for name, shape, dtype in read_keys(keys_txt):
        values = _role_draw(name, shape, seed)
        if name.endswith("empty_weight"):
            out[name] = values.astype(np.float32)
        elif dtype.startswith("float"):
            out[name] = values.astype(np.float16).astype(np.float32)
        else:
            out[name] = values.astype(dtype)
    return out
