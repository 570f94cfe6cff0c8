"""Every aspect ratio that decodes gets instances (issue #25): a 30000x1 or 1x30000 image used to round its short
side to 0 in the test resize (past ~640:1 for the demo model, ~1550:1 for D1) and crash `fastinst predict` (and the
web app) with a traceback; now the short side stays at least 1 pixel and the long side at most the variant's limit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastinst.cli import main
from fastinst.config import get_config
from fastinst.data.images import resize_shape


@pytest.mark.parametrize("variant", ["fastinst-demo", "fastinst-d1-r50", "fastinst-d3-r50vd-dcn"])
def test_resize_shape_never_makes_a_side_zero(variant):
    cfg = get_config(variant)
    short, max_size = cfg.input.min_size_test, cfg.input.max_size_test
    for h, w in [(30000, 1), (1, 30000), (100000, 2), (1, 1), (1, 2 * max_size), (3, 10**6), (640, 1), (1, 1554)]:
        for a, b in ((h, w), (w, h)):
            nh, nw = resize_shape(a, b, short, max_size)
            assert nh >= 1 and nw >= 1, (a, b, nh, nw)
            assert max(nh, nw) <= max_size, (a, b, nh, nw)  # the padded input stays within the variant's limit
    # ordinary shapes keep detectron2's rule exactly
    assert resize_shape(480, 640, 576, 777) == (576, 768)
    assert resize_shape(604, 453, 640, 853) == (853, 640)
    assert resize_shape(30000, 1, 576, 777) == (777, 1)
    assert resize_shape(1, 30000, 224, 320) == (1, 320)
    with pytest.raises(ValueError, match="empty side"):
        resize_shape(0, 5, 576, 777)


def test_thin_images_get_instances_in_predict(demo_weights, tmp_path, capsys):
    folder = tmp_path / "thin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    shapes = {"tall": (30000, 1), "wide": (1, 30000), "dot": (1, 1), "strip": (2, 5000)}
    for name, (h, w) in shapes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    out = tmp_path / "out"
    argv = ["predict", "--model", "fastinst-demo", "--weights", demo_weights, "--device", "cpu", "--output", str(out)]
    assert main([*argv, "--score-threshold", "0", "--max-dets", "2", "--batch-size", "2", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "skipped" not in captured.out
    assert captured.out.strip().splitlines()[-1] == f"predict: 4 images, 8 instances (score >= 0) -> {out}"
    for name, (h, w) in shapes.items():
        assert Image.open(out / f"{name}.png").size == (w, h)
