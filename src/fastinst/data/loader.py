"""Training and evaluation data loaders with a reproducible, resumable, DDP-shardable sample stream.

The global stream
-----------------
Position ``p = 0, 1, 2, ...`` of the infinite training stream holds record ``perm_e[p mod n]`` with ``e = p // n``
and ``perm_e`` the permutation drawn from ``SeedSequence((seed, 0, e))``. The augmentation of that sample uses the
generator ``default_rng(sample_seed(seed, p))`` with ``sample_seed`` derived from ``SeedSequence((seed, 1, p))``,
so every training sample is a pure function of (base seed, p): independent of ranks, workers and restarts.

Aspect-ratio grouping and sharding (the equivalence rule)
--------------------------------------------------------
Grouping runs on the *global* stream with the *global* batch size ``G = batch_size_per_rank * world``: walking the
stream, each item goes to the landscape (w >= h, by the record's size) or the portrait bucket, and a bucket that
reaches ``G`` items is emitted as the next global batch (detectron2's AspectRatioGroupedDataset, applied once to the
global stream instead of per worker). Rank ``r`` of ``world`` trains on ``global_batch[k][r::world]`` at step ``k``.
Hence, exactly: the union over ranks of the step-k batches of a ``world``-process run with ``B`` images per rank is
the step-k batch of a 1-process run with ``B * world`` images (same records, same augmentations, same order when
interleaved ``rank 0, 1, ..., 0, 1, ...``).

Resume
------
Global batch ``k`` depends only on (seed, record aspect flags, G, k); `GroupedInfiniteSampler(start_iter=k)` (or
`load_state_dict({"iteration": k, ...})`) replays the grouping cheaply (whole epochs are skipped with numpy) and
continues with batch ``k``. Because a DataLoader prefetches, the trainer should pass its own iteration count as
``start_iter`` rather than reading the sampler's counter.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import Config, InputConfig
from ..errors import DatasetError
from .core import check_image_size
from .images import read_image
from .transforms import to_tensor_image, train_transform

__all__ = ["GroupedInfiniteSampler", "TrainDataset", "build_test_loader", "build_train_loader", "sample_seed"]

Key = tuple[int, int]  # (record index, sample seed)


def sample_seed(seed: int, position: int) -> int:
    """The augmentation seed of global stream position `position` under base seed `seed`."""
    return int(np.random.SeedSequence((int(seed), 1, int(position))).generate_state(1, np.uint64)[0])


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence((int(seed), 0, int(epoch)))).permutation(n)


class TrainDataset(Dataset):
    """Map-style dataset keyed by ``(record index, sample seed)`` -> the model's training input dict.

    ``dataset[(i, s)]`` reads record i's image, applies `train_transform` with ``np.random.default_rng(s)`` and
    returns ``{"image": uint8 (3, H, W), "height": H0, "width": W0, "image_id", "instances": {"labels": int64 (N,),
    "masks": bool (N, H, W)}}`` (H0, W0 = the image's original size).
    """

    def __init__(
        self, records: Sequence[dict], cfg: InputConfig, reader: Callable[[str], np.ndarray] = read_image
    ) -> None:
        self.records = list(records)
        self.cfg = cfg
        self.reader = reader

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        index, seed = key
        rec = self.records[index]
        image = self.reader(rec["file_name"])
        h0, w0 = image.shape[:2]
        if "height" in rec and "width" in rec:
            check_image_size(rec, (h0, w0))
        img, labels, masks = train_transform(image, rec.get("annotations", []), self.cfg, np.random.default_rng(seed))
        return {
            "image": to_tensor_image(img),
            "height": h0,
            "width": w0,
            "image_id": rec.get("image_id"),
            "instances": {"labels": torch.from_numpy(labels), "masks": torch.from_numpy(masks)},
        }


class GroupedInfiniteSampler:
    """Infinite, shuffled, aspect-ratio-grouped batch sampler for one DDP rank (see the module docstring).

    Iterating yields lists of ``batch_size`` keys ``(record index, sample seed)`` for `TrainDataset`: this rank's
    share ``[rank::world]`` of each global batch of ``batch_size * world`` stream items. `iteration` counts the
    batches yielded so far (plus `start_iter`); `state_dict`/`load_state_dict` save and restore it.
    """

    def __init__(
        self,
        landscape: Sequence[bool],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        start_iter: int = 0,
    ) -> None:
        if len(landscape) == 0:
            raise DatasetError("no training images to sample batches from (an empty split)")
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad sampler setup: batch_size={batch_size}, rank={rank}, world={world}")
        self.groups = np.asarray(landscape, dtype=bool)
        self.batch_size, self.seed, self.rank, self.world = int(batch_size), int(seed), int(rank), int(world)
        self.iteration = int(start_iter)
        self._perms: dict[int, np.ndarray] = {}  # the few most recent epoch permutations (keys of a batch)

    @classmethod
    def from_records(cls, records: Sequence[dict], batch_size: int, **kw: Any) -> GroupedInfiniteSampler:
        """Group by each record's own width/height (landscape when w >= h)."""
        return cls([int(r["width"]) >= int(r["height"]) for r in records], batch_size, **kw)

    # -- state --------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        return {
            "iteration": self.iteration,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world": self.world,
            "num_records": len(self.groups),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        for k in ("seed", "batch_size", "world"):
            if k in state and int(state[k]) != getattr(self, k):
                raise ValueError(f"sampler state has {k}={state[k]}, this sampler has {getattr(self, k)}")
        if "num_records" in state and int(state["num_records"]) != len(self.groups):
            raise ValueError(f"sampler state is for {state['num_records']} records, not {len(self.groups)}")
        self.iteration = int(state["iteration"])

    # -- the global stream --------------------------------------------------------------------------------------

    def _epoch_batches(self, epoch: int, carry: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Global batches completed during `epoch` (arrays of stream positions, in completion order) and the
        positions left waiting in the (portrait, landscape) buckets afterwards."""
        n, size = len(self.groups), self.batch_size * self.world
        perm = _epoch_permutation(self.seed, epoch, n)
        pos = epoch * n + np.arange(n, dtype=np.int64)
        land = self.groups[perm]
        chunks: list[np.ndarray] = []
        new_carry: list[np.ndarray] = []
        for g, flag in enumerate((False, True)):
            queue = np.concatenate([carry[g], pos[land == flag]])
            full = len(queue) // size * size
            chunks.extend(queue[:full].reshape(-1, size))
            new_carry.append(queue[full:])
        chunks.sort(key=lambda c: int(c[-1]))  # a bucket is emitted when its last item arrives
        return chunks, new_carry

    def global_batches(self, start: int = 0) -> Iterator[np.ndarray]:
        """Global batches ``start, start + 1, ...`` as arrays of stream positions."""
        carry = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)]
        done, epoch = 0, 0
        while True:
            chunks, carry = self._epoch_batches(epoch, carry)
            epoch += 1
            if done + len(chunks) <= start:
                done += len(chunks)
                continue
            yield from chunks[max(0, start - done) :]
            done += len(chunks)
            start = done

    def keys(self, positions: np.ndarray) -> list[Key]:
        """Stream positions -> (record index, sample seed) keys."""
        n = len(self.groups)
        out: list[Key] = []
        for p in positions.tolist():
            e = p // n
            if e not in self._perms:
                if len(self._perms) >= 3:
                    del self._perms[min(self._perms)]
                self._perms[e] = _epoch_permutation(self.seed, e, n)
            out.append((int(self._perms[e][p % n]), sample_seed(self.seed, p)))
        return out

    def __iter__(self) -> Iterator[list[Key]]:
        for batch in self.global_batches(self.iteration):
            self.iteration += 1
            yield self.keys(batch[self.rank :: self.world])


def _collate(batch: list[Any]) -> list[Any]:
    return list(batch)


def _identity(item: Any) -> Any:
    return item


class _WorkerSeeder:
    """worker_init_fn: seeds `random`, numpy's global RNG and torch per (seed, rank, worker id)."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank = seed, rank

    def __call__(self, worker_id: int) -> None:
        s = int(np.random.SeedSequence((self.seed, 2, self.rank, worker_id)).generate_state(1)[0])
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


def build_train_loader(
    records: Sequence[dict],
    cfg: Config,
    batch_size_per_rank: int,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    start_iter: int = 0,
    reader: Callable[[str], np.ndarray] = read_image,
) -> DataLoader:
    """Infinite iterable of training batches (lists of `TrainDataset` dicts) for `rank`, from global batch
    `start_iter` on. Records without an instance train as negatives (background images).

    The batches do not depend on `num_workers`; the DataLoader gets its own torch generator so that iterating it
    leaves the process's global torch RNG untouched.
    """
    seed = cfg.solver.seed
    sampler = GroupedInfiniteSampler.from_records(
        records, batch_size_per_rank, seed=seed, rank=rank, world=world, start_iter=start_iter
    )
    return DataLoader(
        TrainDataset(records, cfg.input, reader),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=_WorkerSeeder(seed, rank),
        generator=torch.Generator().manual_seed(seed),
    )


class _TestDataset(Dataset):
    def __init__(self, records: Sequence[dict], reader: Callable[[str], np.ndarray]) -> None:
        self.records, self.reader = list(records), reader

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[dict, np.ndarray]:
        rec = self.records[i]
        image = self.reader(rec["file_name"])
        if "height" in rec and "width" in rec:  # predictions at another size would be scored against wrong pixels
            check_image_size(rec, image.shape[:2])
        return rec, image


def build_test_loader(
    records: Sequence[dict],
    cfg: Config | None = None,
    num_workers: int | None = None,
    reader: Callable[[str], np.ndarray] = read_image,
) -> DataLoader:
    """Iterable of ``(record, uint8 (H0, W0, 3) original image)`` in record order, decoded in `num_workers`
    processes (default ``cfg.solver.num_workers``, or 0). Images are not resized: the model's `detect` applies the
    test resize."""
    if num_workers is None:
        num_workers = cfg.solver.num_workers if cfg is not None else 0
    return DataLoader(
        _TestDataset(records, reader), batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_identity
    )
