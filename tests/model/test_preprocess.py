"""Test-time preprocessing (`fastinst.model.preprocess`) and the model's normalise + pad (`FastInst.preprocess`),
against sizes and values worked out by hand (SPEC §7.10: ResizeShortestEdge with int(v + 0.5) rounding, PIL
bilinear on uint8, (x - mean) / std on the 0-255 scale, zero padding after normalisation to a multiple of 32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fastinst import build_model
from fastinst.model.preprocess import resize_image, resize_shape, to_model_input


@pytest.mark.parametrize(
    ("h", "w", "short", "max_size", "expected"),
    [
        # long side 640·640/427 = 959.25 > 853: both scaled by 853/959.25, h = 569.11
        (427, 640, 640, 853, (569, 853)),
        # the same for a portrait image at the D1 size: w = 576·777/863.3 = 518.4
        (640, 427, 576, 777, (777, 518)),
        # 576·777/864.86 = 517.48: rounds down
        (333, 500, 576, 777, (517, 777)),
        # upscaling a small image; long side 853.33 capped: h = 640·853/853.33 = 639.75 rounds up to 640
        (240, 320, 640, 853, (640, 853)),
        (500, 375, 640, 853, (853, 640)),
        # a very tall image: the long side decides, w = 640·853/3200 = 170.6
        (1000, 200, 640, 853, (853, 171)),
        (612, 612, 640, 853, (640, 640)),  # square
        (576, 700, 576, 777, (576, 700)),  # already at size
        (2, 3, 3, 100, (3, 5)),  # 4.5 rounds half up with int(v + 0.5) (Python's round would give 4)
    ],
)
def test_resize_shape(h, w, short, max_size, expected):
    assert resize_shape(h, w, short, max_size) == expected


def test_resize_image_is_pil_bilinear_on_uint8():
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    for size in ((15, 20), (45, 61)):
        out = resize_image(img, size)
        assert out.shape == (*size, 3) and out.dtype == np.uint8
        pil = np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.Resampling.BILINEAR))
        assert np.array_equal(out, pil)
    assert resize_image(img, (30, 40)) is img  # the same size: no resampling, no copy
    assert (resize_image(np.full((30, 40, 3), 77, np.uint8), (17, 23)) == 77).all()


def test_downscaling_is_antialiased():
    """A row of four black then four white pixels shrunk 4x: an antialiased filter mixes both halves into each
    output pixel; point-sampled bilinear (F.interpolate) would read pixels 1-2 and 5-6 and give exactly 0 and 255."""
    row = np.zeros((1, 8, 3), np.uint8)
    row[:, 4:] = 255
    out = resize_image(row, (1, 2))[0, :, 0]
    assert 0 < out[0] < out[1] < 255


def test_to_model_input():
    img = np.random.default_rng(1).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    d = to_model_input(img, 64, 100)  # scale 64/50 -> 102.4 > 100 wide: h = 64·100/102.4 = 62.5 -> 63
    assert set(d) == {"image", "height", "width"}
    assert (d["height"], d["width"]) == (50, 80)  # the original size, for the post-processing
    assert d["image"].dtype == torch.uint8 and d["image"].shape == (3, 63, 100)
    assert np.array_equal(d["image"].numpy(), resize_image(img, (63, 100)).transpose(2, 0, 1))


@pytest.fixture(scope="module")
def demo():
    return build_model("fastinst-demo").eval()


def test_model_normalises_then_pads_to_a_multiple_of_32(demo):
    black = torch.zeros(3, 50, 70, dtype=torch.uint8)
    white = torch.full((3, 64, 33), 255, dtype=torch.uint8)
    images, sizes = demo.preprocess([{"image": black}, {"image": white}])
    assert images.shape == (2, 3, 64, 96) and images.dtype == torch.float32  # max (64, 70) rounded up to 32s
    assert sizes == [(50, 70), (64, 33)]
    # (0 - mean) / std and (255 - mean) / std per RGB channel, mean/std of SPEC §1.3, worked out by hand
    low = torch.tensor([-123.675 / 58.395, -116.28 / 57.12, -103.53 / 57.375])  # -2.1179, -2.0357, -1.8044
    high = torch.tensor([131.325 / 58.395, 138.72 / 57.12, 2.64])  # 2.2489, 2.4286, 151.47 / 57.375 = 2.64
    for c in range(3):
        torch.testing.assert_close(images[0, c, :50, :70], torch.full((50, 70), float(low[c])))
        torch.testing.assert_close(images[1, c, :64, :33], torch.full((64, 33), float(high[c])))
    # the padding is zero after normalisation (not the normalised black)
    assert (images[0, :, 50:, :] == 0).all() and (images[0, :, :, 70:] == 0).all()
    assert (images[1, :, :, 33:] == 0).all()


def test_model_leaves_a_multiple_of_32_unpadded(demo):
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    images, sizes = demo.preprocess([{"image": image}])
    assert images.shape == (1, 3, 64, 96) and sizes == [(64, 96)]
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    torch.testing.assert_close(images[0], (image.float() - mean) / std)
