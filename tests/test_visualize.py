"""draw_instances colours masks, outlines and labels them; plot_training_curves writes a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastinst.errors import FastInstError
from fastinst.visualize import PALETTE, draw_instances, instance_colour, mask_edges, plot_training_curves


def _scene() -> tuple[np.ndarray, np.ndarray]:
    img = np.full((120, 160, 3), 128, np.uint8)
    masks = np.zeros((2, 120, 160), bool)
    masks[0, 40:100, 20:80] = True
    masks[1, 50:110, 100:150] = True
    return img, masks


def test_output_and_colours() -> None:
    img, masks = _scene()
    out = draw_instances(img, masks, [0, 1], [0.9, 0.4], ["circle", "star"])
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.shares_memory(out, img)
    assert np.array_equal(img, np.full_like(img, 128))  # input untouched
    centre0, centre1 = out[70, 50].astype(int), out[80, 125].astype(int)
    assert np.abs(centre0 - (128 + np.array(PALETTE[0])) / 2).max() <= 1  # 50 % blend with instance colour
    assert np.abs(centre1 - (128 + np.array(PALETTE[1])) / 2).max() <= 1
    assert np.array_equal(out[5, 155], img[5, 155])  # far from masks and labels: unchanged
    edge = out[99, 50].astype(int)  # on the bottom contour of instance 0
    assert np.abs(edge - centre0).sum() > 30 and np.abs(edge - 128).sum() > 30
    label_area = out[20:40, 20:80]  # label box drawn just above instance 0
    assert np.all(label_area[label_area.shape[0] // 2].astype(int) != 128, axis=-1).any()


def test_threshold_labels_and_inputs() -> None:
    img, masks = _scene()
    out = draw_instances(img, masks, [0, 1], [0.9, 0.4], None, score_threshold=0.5)
    assert np.array_equal(out[80, 125], img[80, 125])  # instance 1 filtered out
    assert not np.array_equal(out[70, 50], img[70, 50])
    same = draw_instances(img, torch.from_numpy(masks), torch.tensor([0, 1]), torch.tensor([0.9, 0.4]))
    assert same.shape == img.shape
    assert np.array_equal(draw_instances(img, masks), draw_instances(img, masks, None, None))
    assert np.array_equal(draw_instances(img, np.zeros((0, 120, 160), bool), [], []), img)
    with pytest.raises(ValueError, match="masks must be"):
        draw_instances(img, masks[:, :50])
    with pytest.raises(ValueError, match="1 labels for 2 masks"):
        draw_instances(img, masks, [0])
    with pytest.raises(ValueError, match="uint8"):
        draw_instances(img.astype(np.float32), masks)
    assert instance_colour(0) == instance_colour(len(PALETTE)) and instance_colour(0) != instance_colour(1)


def test_mask_edges_width() -> None:
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True
    e = mask_edges(m, 2)
    assert e.sum() == 100 - 36 and not e[9, 9] and e[5, 9] and e[6, 9] and not e[7, 9]
    full = np.ones((6, 6), bool)
    assert mask_edges(full, 1).sum() == 20  # the image border counts as outside


def test_plot_training_curves(tmp_path: Path) -> None:
    lines = []
    for i in range(0, 100, 5):
        lines.append(
            json.dumps(
                {
                    "iter": i,
                    "total_loss": 3.0 / (i + 1) + 0.2,
                    "loss_ce": 1.0 / (i + 1),
                    "loss_mask": 0.5,
                    "lr": 1e-4 * min(1.0, i / 20),
                }
            )
        )
        if i % 25 == 0:
            lines.append(json.dumps({"iter": i, "AP": i / 2.0, "AP50": i * 0.7}))
    lines.append('{"iter": 10')  # a half-written line is skipped
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    out = plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 1000 and png.height > 300
    (tmp_path / "bad.jsonl").write_text("not json\n")
    with pytest.raises(FastInstError, match="no metrics records"):
        plot_training_curves(tmp_path / "bad.jsonl", tmp_path / "x.png")
    with pytest.raises(FastInstError, match="not found"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")


def test_best_instance_on_top_and_labels_do_not_cover_each_other(monkeypatch) -> None:
    """Three masks sharing a top-left corner: the best-scoring one is drawn last (its colour wins where they
    overlap), its label keeps its place and is drawn last, and no two label boxes overlap."""
    import fastinst.visualize as vis
    from fastinst.visualize import draw_instances, instance_colour

    image = np.zeros((120, 160, 3), np.uint8)
    masks = np.zeros((3, 120, 160), bool)
    masks[0, 40:100, 30:120] = True
    masks[1, 40:80, 30:90] = True
    masks[2, 40:70, 30:70] = True
    scores = [0.4, 0.9, 0.6]  # instance 1 is the best
    boxes: list[tuple[tuple[int, int, int, int], tuple]] = []
    draw_label = vis.draw_label
    monkeypatch.setattr(
        vis, "draw_label", lambda out, box, colour, *a: boxes.append((box, colour)) or draw_label(out, box, colour, *a)
    )
    out = draw_instances(image, masks, [0, 1, 2], scores, ["a", "b", "c"], alpha=1.0, contour_width=0)
    rects = [xy for xy, _ in boxes]
    inside_all = [
        (y, x)
        for y in range(40, 70)
        for x in range(30, 70)
        if not any(r[0] <= x <= r[2] and r[1] <= y <= r[3] for r in rects)
    ]
    assert inside_all and all(tuple(out[y, x]) == instance_colour(1) for y, x in inside_all)  # the best one on top
    assert [fill for _, fill in boxes][-1] == instance_colour(1)  # the best label is drawn last
    best = rects[-1]
    assert best[1] in (40 - (best[3] - best[1] + 1), 40)  # above the mask (or just inside): its own place
    for a_i, a in enumerate(rects):
        for b in rects[a_i + 1 :]:
            assert not (a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]), (a, b)


def test_band_wise_blending_equals_whole_image_blending(monkeypatch):
    """Huge images are blended a band of rows at a time (bounded memory): bands of 1-4 rows give exactly the pixels
    of one band covering the whole image, outlines across band borders included."""
    import fastinst.visualize as vis

    rng = np.random.default_rng(0)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(5, 120, 2))
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        n = int(rng.integers(1, 6))
        masks = np.zeros((n, h, w), bool)
        for k in range(n):
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            masks[k, y0 : y0 + int(rng.integers(1, h)), x0 : x0 + int(rng.integers(1, w))] = True
            masks[k] &= rng.random((h, w)) < 0.95
        labels, scores = rng.integers(0, 3, n), rng.random(n)
        width = int(rng.integers(1, 4))
        monkeypatch.setattr(vis, "_BAND_BYTES", 1 << 40)
        whole = vis.draw_instances(img, masks, labels, scores, ["a", "b", "c"], contour_width=width)
        monkeypatch.setattr(vis, "_BAND_BYTES", int(rng.integers(1, 5)) * w * 12)
        banded = vis.draw_instances(img, masks, labels, scores, ["a", "b", "c"], contour_width=width)
        assert np.array_equal(whole, banded)
