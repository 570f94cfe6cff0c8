"""The five published variants: exact parameter counts and the official state-dict keys (names, shapes, order)."""

import pytest
import torch

from conftest import FIXTURES
from fastinst import build_model
from fastinst.config import ALIASES, canonical_name

COUNTS = {
    "fastinst-d1-r50": 29_658_035,
    "fastinst-d3-r50": 34_176_597,
    "fastinst-d3-r101": 53_116_501,
    "fastinst-d1-r50vd-dcn": 30_174_965,
    "fastinst-d3-r50vd-dcn": 34_693_527,
}


@pytest.mark.parametrize("alias", list(COUNTS))
def test_params_and_keys(alias):
    model = build_model(alias)
    assert sum(p.numel() for p in model.parameters()) == COUNTS[alias]
    name = canonical_name(alias)
    keys = sorted(FIXTURES.glob(f"{name}-s*/keys.txt"))
    if not keys:
        pytest.skip("no keys.txt for this variant")
    expected = []
    for line in keys[0].read_text().splitlines():
        if line.strip():
            n, shape, _ = line.split("\t")
            expected.append((n, tuple(int(s) for s in shape.split(",") if s)))
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == expected


def test_official_names_and_aliases_build_the_same():
    for alias, official in ALIASES.items():
        assert canonical_name(alias) == official
        assert canonical_name(official + "_34.9.pth") == official


def test_no_num_batches_tracked_and_buffers_frozen():
    model = build_model("fastinst-d1-r50")
    sd = model.state_dict()
    assert not any("num_batches_tracked" in k for k in sd)
    assert "pixel_mean" not in sd and "criterion.empty_weight" in sd
    assert torch.equal(sd["criterion.empty_weight"][-1:], torch.tensor([0.1]))


def test_demo_variant_trains_forward():
    model = build_model("fastinst-demo").train()
    img = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks[0, 10:40, 10:50] = True
    masks[1, 50:90, 60:120] = True
    batch = [{"image": img, "height": 96, "width": 128, "instances": {"labels": torch.tensor([0, 2]), "masks": masks}}]
    losses = model(batch)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_proposal", "loss_ce_0", "loss_ce_1"} <= set(losses)
