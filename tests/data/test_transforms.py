"""Training augmentation: size rules of both paths, masks moving with the image, RLE == polygon, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pycocotools import mask as mask_util

from fastinst.config import InputConfig
from fastinst.data.transforms import (
    Plan,
    apply_bitmap,
    apply_image,
    polygons_to_mask,
    rle_to_mask,
    sample_plan,
    train_transform,
)
from fastinst.model.preprocess import resize_image, resize_shape

CROP = InputConfig()  # official: crop enabled
NO_CROP = dataclasses.replace(CROP, crop_enabled=False)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": list(rle["size"]), "counts": rle["counts"].decode()}
    flat = mask.astype(np.uint8).flatten(order="F")  # uncompressed RLE: run lengths starting with zeros
    change = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
    counts = np.diff(np.r_[0, change]).tolist()
    return {"size": list(mask.shape), "counts": counts}


def _no_crop_plan(h: int, w: int, cfg: InputConfig, rng: np.random.Generator) -> Plan:
    """What the no-crop path must draw: one resize choice, then one flip draw."""
    short = cfg.min_size_train[int(rng.integers(len(cfg.min_size_train)))]
    flip = bool(cfg.random_flip and rng.random() < 0.5)
    return Plan((h, w), None, None, resize_shape(h, w, short, cfg.max_size_train), flip)


@pytest.mark.parametrize("hw", [(480, 640), (640, 427), (300, 1200), (200, 180)])
def test_no_crop_sizes(hw):
    h, w = hw
    allowed = {resize_shape(h, w, s, NO_CROP.max_size_train) for s in NO_CROP.min_size_train}
    flips = set()
    for seed in range(20):
        plan = sample_plan(h, w, NO_CROP, np.random.default_rng(seed))
        assert plan.crop is None and plan.output_size in allowed
        assert plan == _no_crop_plan(h, w, NO_CROP, np.random.default_rng(seed))
        flips.add(plan.flip)
    assert flips == {True, False}


@pytest.mark.parametrize("hw", [(480, 640), (640, 427), (300, 1200)])
def test_crop_path_sizes(hw):
    h, w = hw
    crops = 0
    for seed in range(40):
        plan = sample_plan(h, w, CROP, np.random.default_rng(seed))
        if plan.crop is None:
            continue
        crops += 1
        assert plan.pre_crop_size in {resize_shape(h, w, s, 1 << 62) for s in CROP.crop_resize_sizes}
        ph, pw = plan.pre_crop_size
        top, left, ch, cw = plan.crop
        assert min(ph, 384) <= ch <= min(ph, 600) and min(pw, 384) <= cw <= min(pw, 600)
        assert 0 <= top <= ph - ch and 0 <= left <= pw - cw
        assert plan.output_size in {resize_shape(ch, cw, s, CROP.max_size_train) for s in CROP.min_size_train}
    assert 10 < crops < 30  # about half of the samples take the crop path


def test_image_and_masks_shapes_and_crowd_dropped():
    img = _image(120, 160)
    annos = [
        {"category_id": 3, "segmentation": _rect(10, 10, 50, 40), "iscrowd": 0},
        {"category_id": 1, "segmentation": _rect(0, 0, 5, 5), "iscrowd": 1},
        {"category_id": 2, "segmentation": _rle(np.ones((120, 160), bool)), "iscrowd": 0},
    ]
    cfg = dataclasses.replace(
        CROP, crop_resize_sizes=(100, 120), crop_size=(60, 90), min_size_train=(64, 96), max_size_train=200
    )
    for seed in range(8):
        out, labels, masks = train_transform(img, annos, cfg, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous
        assert labels.dtype == np.int64 and labels.tolist() == [3, 2]
        assert masks.dtype == bool and masks.shape == (2, *out.shape[:2])
        assert masks[1].all()  # a full-image mask stays full through any crop/resize/flip


def test_no_instances():
    out, labels, masks = train_transform(_image(50, 60), [], NO_CROP, np.random.default_rng(0))
    assert labels.shape == (0,) and masks.shape == (0, *out.shape[:2]) and masks.dtype == bool


def test_rectangle_lands_where_expected_after_resize_and_flip():
    # 100x200 image, short side 50 -> 50x100 (scale 0.5); rectangle x 40..80, y 20..60 -> x 20..40, y 10..30.
    cfg = dataclasses.replace(NO_CROP, min_size_train=(50,), max_size_train=1000)
    img = _image(100, 200)
    annos = [{"category_id": 0, "segmentation": _rect(40, 20, 80, 60), "iscrowd": 0}]
    seen = set()
    for seed in range(10):
        plan = sample_plan(100, 200, cfg, np.random.default_rng(seed))
        out, _, masks = train_transform(img, annos, cfg, np.random.default_rng(seed))
        assert out.shape == (50, 100, 3)
        expected = np.zeros((50, 100), bool)
        if plan.flip:
            expected[10:30, 60:80] = True
            np.testing.assert_array_equal(out, resize_image(img, (50, 100))[:, ::-1])
        else:
            expected[10:30, 20:40] = True
            np.testing.assert_array_equal(out, resize_image(img, (50, 100)))
        np.testing.assert_array_equal(masks[0], expected)
        seen.add(plan.flip)
    assert seen == {True, False}


def test_rectangle_through_a_known_crop():
    # 100x100 image; crop path: resize to 200x200 (x2), crop top=40 left=60 of 100x100, resize to 50x50 (x0.5), flip.
    img = _image(100, 100)
    plan = Plan((100, 100), (200, 200), (40, 60, 100, 100), (50, 50), True)
    poly = _rect(40, 30, 60, 50)  # x2 -> 80..120, 60..100; -crop -> 20..60, 20..60; x0.5 -> 10..30; flip -> 20..40
    from fastinst.data.transforms import apply_polygon

    mask = polygons_to_mask([apply_polygon(p, plan) for p in poly], 50, 50)
    expected = np.zeros((50, 50), bool)
    expected[10:30, 20:40] = True
    np.testing.assert_array_equal(mask, expected)
    bitmap = np.zeros((100, 100), bool)
    bitmap[30:50, 40:60] = True
    np.testing.assert_array_equal(apply_bitmap(bitmap, plan), expected)
    out = apply_image(img, plan)
    ref = resize_image(np.ascontiguousarray(resize_image(img, (200, 200))[40:140, 60:160]), (50, 50))[:, ::-1]
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("compressed", [True, False])
def test_rle_and_polygon_give_the_same_mask(compressed):
    h, w = 90, 130
    poly = _rect(12, 18, 70, 66)
    bitmap = polygons_to_mask(poly, h, w)
    assert bitmap.sum() == 58 * 48
    rle = _rle(bitmap, compressed)
    np.testing.assert_array_equal(rle_to_mask(rle), bitmap)
    img = _image(h, w)
    cfg = dataclasses.replace(
        CROP, crop_resize_sizes=(90, 100), crop_size=(60, 80), min_size_train=(45, 60, 90), max_size_train=400
    )
    for seed in range(12):
        _, _, a = train_transform(
            img, [{"category_id": 0, "segmentation": poly, "iscrowd": 0}], cfg, np.random.default_rng(seed)
        )
        _, _, b = train_transform(
            img, [{"category_id": 0, "segmentation": rle, "iscrowd": 0}], cfg, np.random.default_rng(seed)
        )
        # polygons are rasterised at the final size, RLE bitmaps are nearest-resized: edges may move by a pixel
        diff = (a[0] ^ b[0]).sum()
        assert diff <= 0.12 * max(1, a[0].sum()), (seed, diff, a[0].sum())
        if a[0].any():
            assert (a[0] & b[0]).sum() >= 0.85 * a[0].sum()


def test_rle_and_polygon_identical_for_integer_scales():
    # An exact 2x upscale with integer rectangle corners: both representations are pixel-identical.
    img = _image(40, 60)
    cfg = dataclasses.replace(NO_CROP, min_size_train=(80,), max_size_train=1000)
    poly = _rect(10, 6, 30, 20)
    rle = _rle(polygons_to_mask(poly, 40, 60))
    for seed in range(4):
        _, _, a = train_transform(img, [{"category_id": 0, "segmentation": poly}], cfg, np.random.default_rng(seed))
        _, _, b = train_transform(img, [{"category_id": 0, "segmentation": rle}], cfg, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)


def test_deterministic_for_a_seed():
    img = _image(240, 320, seed=3)
    annos = [{"category_id": 1, "segmentation": _rect(30, 40, 200, 180), "iscrowd": 0}]
    cfg = dataclasses.replace(
        CROP, crop_resize_sizes=(200, 240), crop_size=(120, 200), min_size_train=(96, 128), max_size_train=256
    )
    outs = [train_transform(img, annos, cfg, np.random.default_rng(7)) for _ in range(2)]
    for x, y in zip(*outs, strict=True):
        np.testing.assert_array_equal(x, y)
    other = [train_transform(img, annos, cfg, np.random.default_rng(s))[0].shape for s in range(8)]
    assert len(set(other)) > 1


def test_instance_cropped_away_is_kept_empty():
    img = _image(100, 100)
    plan = Plan((100, 100), (100, 100), (0, 0, 50, 50), (50, 50), False)  # keep the top-left quarter only
    from fastinst.data.transforms import apply_polygon

    gone = _rect(70, 70, 90, 90)
    assert not polygons_to_mask([apply_polygon(p, plan) for p in gone], 50, 50).any()
    partial = polygons_to_mask([apply_polygon(p, plan) for p in _rect(40, 40, 90, 90)], 50, 50)
    assert partial.sum() == 100 and partial[40:, 40:].all()
    # end to end: a small crop window with the object on the other side; the annotation survives, all zeros
    cfg = dataclasses.replace(
        CROP, crop_resize_sizes=(100,), crop_size=(20, 20), min_size_train=(40,), max_size_train=1000
    )
    annos = [
        {"category_id": 5, "segmentation": _rect(0, 0, 10, 10), "iscrowd": 0},
        {"category_id": 6, "segmentation": _rect(0, 0, 100, 100), "iscrowd": 0},
    ]
    empty_seen = False
    for seed in range(30):
        plan = sample_plan(100, 100, cfg, np.random.default_rng(seed))
        out, labels, masks = train_transform(img, annos, cfg, np.random.default_rng(seed))
        assert labels.tolist() == [5, 6] and masks.shape == (2, *out.shape[:2])
        assert masks[1].all()
        if plan.crop is not None and (plan.crop[0] >= 10 or plan.crop[1] >= 10):
            assert not masks[0].any()
            empty_seen = True
    assert empty_seen
