"""Training stream: aspect grouping, DDP sharding equivalence, exact resume, worker-count independence."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from fastinst.config import apply_overrides, get_config
from fastinst.data.loader import (
    GroupedInfiniteSampler,
    TrainDataset,
    build_test_loader,
    build_train_loader,
    sample_seed,
)

SMALL = [
    "input.min_size_train=[32,48]",
    "input.max_size_train=96",
    "input.crop_enabled=true",
    "input.crop_resize_sizes=[40,50]",
    "input.crop_size=[24,40]",
    "solver.seed=5",
]


def _cfg():
    return apply_overrides(get_config("fastinst-demo"), SMALL)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Seven small PNGs (landscape and portrait) with two polygon instances each."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(40, 60), (60, 40), (50, 50), (30, 70), (64, 48), (44, 66), (70, 36)]):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        annos = [
            {"category_id": i % 3, "segmentation": [[2, 2, w / 2, 2, w / 2, h / 2, 2, h / 2]], "iscrowd": 0},
            {"category_id": 1, "segmentation": [[w / 3, h / 3, w - 1, h / 3, w - 1, h - 1]], "iscrowd": 0},
        ]
        out.append({"file_name": str(path), "image_id": i, "height": h, "width": w, "annotations": annos})
    return out


def _take(it, k):
    return list(itertools.islice(it, k))


def _same_sample(a: dict, b: dict) -> None:
    assert a["image_id"] == b["image_id"]
    assert torch.equal(a["image"], b["image"])
    assert torch.equal(a["instances"]["labels"], b["instances"]["labels"])
    assert torch.equal(a["instances"]["masks"], b["instances"]["masks"])


def test_grouping_and_epochs():
    land = [True, False, True, True, False, True, False, False, True, True, True]
    s = GroupedInfiniteSampler(land, batch_size=3, seed=1)
    batches = _take(iter(s), 40)
    for b in batches:
        assert len(b) == 3 and len({land[i] for i, _ in b}) == 1
    # the positions of the stream are consumed epoch by epoch: every epoch is a permutation of the records
    g = GroupedInfiniteSampler(land, batch_size=3, seed=1)
    positions = np.sort(np.concatenate(_take(g.global_batches(), 40)))
    first = positions[positions < 5 * len(land)]
    assert len(first) >= 4 * len(land)  # at most batch_size - 1 items wait in each bucket
    idx = [i for i, _ in g.keys(np.arange(len(land) * 2))]
    assert sorted(idx[: len(land)]) == list(range(len(land))) and sorted(idx[len(land) :]) == list(range(len(land)))
    assert idx[: len(land)] != idx[len(land) :]  # a fresh permutation per epoch
    assert s.state_dict()["iteration"] == 40


def test_sharding_equivalence():
    land = [bool(x) for x in np.random.default_rng(3).integers(0, 2, 13)]
    single = _take(iter(GroupedInfiniteSampler(land, batch_size=4, seed=9)), 25)
    ranks = [_take(iter(GroupedInfiniteSampler(land, batch_size=2, seed=9, rank=r, world=2)), 25) for r in range(2)]
    for k in range(25):
        interleaved = [ranks[j % 2][k][j // 2] for j in range(4)]
        assert interleaved == single[k]


def test_resume_reproduces_next_batches():
    land = [True, False, True, False, False, True, True]
    a = GroupedInfiniteSampler(land, batch_size=2, seed=4, rank=1, world=2)
    it = iter(a)
    _take(it, 7)
    state = a.state_dict()
    expected = _take(it, 6)
    b = GroupedInfiniteSampler(land, batch_size=2, seed=4, rank=1, world=2)
    b.load_state_dict(state)
    assert _take(iter(b), 6) == expected
    # a far start (hundreds of epochs are skipped with numpy) equals iterating there
    far = _take(iter(GroupedInfiniteSampler(land, batch_size=2, seed=4, start_iter=500)), 3)
    full = _take(iter(GroupedInfiniteSampler(land, batch_size=2, seed=4)), 503)[500:]
    assert far == full
    with pytest.raises(ValueError):
        GroupedInfiniteSampler(land, batch_size=3, seed=4, world=2).load_state_dict(state)


def test_sample_is_pure_function_of_seed_and_position(records):
    """Stream position p holds record perm_e[p mod n] (e = p // n, perm_e drawn from SeedSequence((seed, 0, e))),
    augmented with the generator of `sample_seed(seed, p)` (the module docstring). Recomputed here from that rule
    with a dataset of its own, every sample of the first batches equals what two independently built loaders give."""
    seed, n = 5, len(records)  # _cfg() has solver.seed=5
    first = [_take(iter(build_train_loader(copy.deepcopy(records), _cfg(), 4)), 3) for _ in range(2)]
    sampler = GroupedInfiniteSampler.from_records(records, 4, seed=seed)
    ds = TrainDataset(copy.deepcopy(records), _cfg().input)
    for k, positions in enumerate(_take(sampler.global_batches(), 3)):
        assert len(positions) == 4
        for j, p in enumerate(positions.tolist()):
            perm = np.random.default_rng(np.random.SeedSequence((seed, 0, p // n))).permutation(n)
            expected = ds[(int(perm[p % n]), sample_seed(seed, p))]
            for loader in first:
                _same_sample(loader[k][j], expected)
    s = expected
    assert s["image"].dtype == torch.uint8 and s["image"].shape[0] == 3
    assert s["instances"]["masks"].shape == (2, *s["image"].shape[1:]) and s["instances"]["masks"].dtype == torch.bool
    assert s["instances"]["labels"].dtype == torch.int64


def _augmentation(sample: dict) -> tuple:
    return (
        tuple(sample["image"].shape),
        sample["image"].numpy().tobytes(),
        sample["instances"]["masks"].numpy().tobytes(),
    )


def test_augmentation_follows_the_sample_seed(records):
    """One record: the same sample seed gives the same augmentation from two datasets, other seeds other ones (the
    seeds of eight stream positions give at least four different results), and the base seed matters too."""
    a, b = TrainDataset(records, _cfg().input), TrainDataset(copy.deepcopy(records), _cfg().input)
    key = (3, sample_seed(5, 17))
    _same_sample(a[key], b[key])
    assert (a[key]["height"], a[key]["width"]) == (30, 70)  # the original size, whatever the augmentation
    outcomes = {_augmentation(a[(3, sample_seed(5, p))]) for p in range(8)}
    assert len(outcomes) >= 4, len(outcomes)
    assert _augmentation(a[(3, sample_seed(5, 17))]) != _augmentation(a[(3, sample_seed(6, 17))])
    assert sample_seed(5, 17) != sample_seed(5, 18) and sample_seed(5, 17) != sample_seed(6, 17)
    # another base seed: another stream (order and augmentations) from the same records
    other = apply_overrides(_cfg(), ["solver.seed=6"])
    batch5 = _take(iter(build_train_loader(records, _cfg(), 4)), 1)[0]
    batch6 = _take(iter(build_train_loader(records, other, 4)), 1)[0]
    assert [_augmentation(x) for x in batch5] != [_augmentation(x) for x in batch6]


def test_loader_workers_ranks_and_resume(records):
    cfg = _cfg()
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    base = _take(iter(build_train_loader(records, cfg, 4, num_workers=0)), 5)
    assert torch.equal(torch.rand(1), before)  # iterating the loader leaves the global torch RNG alone
    workers = _take(iter(build_train_loader(records, cfg, 4, num_workers=2)), 5)
    resumed = _take(iter(build_train_loader(records, cfg, 4, num_workers=0, start_iter=3)), 2)
    ranks = [_take(iter(build_train_loader(records, cfg, 2, rank=r, world=2)), 5) for r in range(2)]
    for k in range(5):
        assert len(base[k]) == 4
        shapes = {tuple(b["image"].shape) for b in base[k]}
        assert len({(r["width"] >= r["height"]) for r in base[k]}) == 1, shapes
        for j in range(4):
            _same_sample(base[k][j], workers[k][j])
            _same_sample(base[k][j], ranks[j % 2][k][j // 2])
            if k >= 3:
                _same_sample(base[k][j], resumed[k - 3][j])


def test_test_loader(records):
    out = list(build_test_loader(records[:3], _cfg(), num_workers=0))
    assert [r["image_id"] for r, _ in out] == [0, 1, 2]
    for rec, img in out:
        assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == (rec["height"], rec["width"], 3)
