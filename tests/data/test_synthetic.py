"""The embedded shapes dataset: deterministic, valid COCO, visible-part masks, generated once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from fastinst.data.synthetic import (
    CATEGORY_NAMES,
    MIN_VISIBLE_AREA,
    ensure_synthetic_coco,
    generate_synthetic_coco,
    render_sample,
)

# pycocotools' own decode() trips a numpy 2 deprecation warning; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return generate_synthetic_coco(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=4, image_size=96, seed=3)


def test_layout_and_paths(small: dict) -> None:
    root = small["root"]
    assert (root / "done").is_file()
    assert sorted(p.name for p in small["train_images"].iterdir()) == [f"{i:06d}.png" for i in range(12)]
    assert len(list(small["val_images"].glob("*.png"))) == 4
    assert small["train_json"] == root / "annotations" / "instances_train.json" and small["val_json"].is_file()
    assert small["names"] == list(CATEGORY_NAMES) == ["circle", "square", "triangle", "star"]


def test_coco_json_loads_and_masks_match_images(small: dict) -> None:
    for split, n in (("train", 12), ("val", 4)):
        coco = COCO(str(small[f"{split}_json"]))
        assert [c["id"] for c in coco.loadCats(coco.getCatIds())] == [1, 2, 3, 4]
        assert len(coco.getImgIds()) == n
        for img in coco.loadImgs(coco.getImgIds()):
            pixels = np.asarray(Image.open(small[f"{split}_images"] / img["file_name"]))
            assert pixels.shape == (img["height"], img["width"], 3) == (96, 96, 3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert 1 <= len(anns) <= 6
            union = np.zeros((96, 96), int)
            for a in anns:
                m = coco.annToMask(a)
                assert m.shape == (96, 96) and a["iscrowd"] == 0 and a["category_id"] in (1, 2, 3, 4)
                assert a["area"] == m.sum() >= MIN_VISIBLE_AREA  # the visible-area rule
                assert np.allclose(a["bbox"], mask_utils.toBbox(a["segmentation"]))
                assert isinstance(a["segmentation"]["counts"], str)
                union += m
            assert union.max() == 1  # visible parts of occluding shapes never overlap


def test_deterministic_and_seed_dependent(tmp_path: Path, small: dict) -> None:
    again = generate_synthetic_coco(tmp_path / "again", num_train=12, num_val=4, image_size=96, seed=3)
    for key in ("train_json", "val_json"):
        assert json.loads(again[key].read_text()) == json.loads(small[key].read_text())
    for i in range(12):
        name = f"{i:06d}.png"
        assert np.array_equal(
            np.asarray(Image.open(again["train_images"] / name)), np.asarray(Image.open(small["train_images"] / name))
        )
    assert not np.array_equal(render_sample(3, "train", 0, 96)[0], render_sample(4, "train", 0, 96)[0])
    assert not np.array_equal(render_sample(3, "train", 0, 96)[0], render_sample(3, "val", 0, 96)[0])


def test_occlusion_and_contrast() -> None:
    occluded = 0
    for i in range(40):
        img, inst = render_sample(0, "train", i, 128)
        assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
        for _, m in inst:
            assert m.sum() >= MIN_VISIBLE_AREA
            ring = np.zeros_like(m)
            ys, xs = np.nonzero(m)
            ring[max(ys.min() - 3, 0) : ys.max() + 4, max(xs.min() - 3, 0) : xs.max() + 4] = True
            ring &= ~m
            inside, outside = img[m].astype(float).mean(0), img[ring].astype(float).mean(0)
            if ring.sum() > 20:
                assert np.linalg.norm(inside - outside) > 25  # a shape stands out from its surroundings
        for a in range(len(inst)):
            grown = inst[a][1].copy()
            grown[1:] |= grown[:-1].copy()
            grown[:, 1:] |= grown[:, :-1].copy()
            occluded += sum(bool((grown & inst[b][1]).any()) for b in range(a + 1, len(inst)))
    assert occluded >= 3  # touching visible masks: one shape lies partly over another


def test_sizes_and_speed_sanity() -> None:
    start, diam = time.perf_counter(), []
    for i in range(30):
        _, inst = render_sample(1, "train", i, 256)
        for _, m in inst:
            ys, xs = np.nonzero(m)
            diam.append(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1)
    assert time.perf_counter() - start < 20  # ~10 ms per image normally; generous for busy machines
    assert min(diam) < 40 and max(diam) > 70 and max(diam) <= 256


def test_ensure_generates_once_and_regenerates(tmp_path: Path) -> None:
    kw = {"num_train": 3, "num_val": 2, "image_size": 64, "seed": 0}
    paths = ensure_synthetic_coco(tmp_path / "d", **kw)
    stamp = paths["train_json"].stat().st_mtime_ns
    first = paths["train_images"] / "000000.png"
    first.write_bytes(b"sentinel")
    assert ensure_synthetic_coco(tmp_path / "d", **kw)["train_json"] == paths["train_json"]
    assert first.read_bytes() == b"sentinel" and paths["train_json"].stat().st_mtime_ns == stamp
    (tmp_path / "d" / "done").unlink()  # an interrupted generation: no marker
    ensure_synthetic_coco(tmp_path / "d", **kw)
    assert first.read_bytes() != b"sentinel" and (tmp_path / "d" / "done").is_file()
    ensure_synthetic_coco(tmp_path / "d", **{**kw, "num_train": 2})  # other parameters: regenerated, stale removed
    assert sorted(p.name for p in paths["train_images"].iterdir()) == ["000000.png", "000001.png"]
    assert len(json.loads(paths["train_json"].read_text())["images"]) == 2
    with pytest.raises(TypeError):
        ensure_synthetic_coco(tmp_path / "d", bogus=1)
