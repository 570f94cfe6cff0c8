"""Checkpoint loading: official release format, DDP prefixes, clear errors, ImageNet backbones, nothing executed."""

import pickle

import numpy as np
import pytest
import torch
import torchvision

from fastinst import build_model
from fastinst.backbone_weights import load_backbone
from fastinst.checkpoint import load_checkpoint, read_checkpoint
from fastinst.errors import CheckpointError


@pytest.fixture(scope="module")
def d1():
    torch.manual_seed(0)
    return build_model("fastinst-d1-r50").eval()


def _outputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        return model([{"image": img, "height": 96, "width": 128}])[0]


def test_official_release_format_roundtrip(d1, tmp_path):
    path = tmp_path / "fastinst_R50_ppm-fpn_x1_576_34.9.pth"
    torch.save({"model": d1.state_dict(), "__author__": "test"}, path)
    other = build_model("fastinst-d1-r50").eval()
    load_checkpoint(other, path)
    a, b = _outputs(d1), _outputs(other)
    assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["scores"], b["scores"])


def test_module_prefix_and_missing_criterion_copy(d1, tmp_path):
    sd = {"module." + k: v for k, v in d1.state_dict().items() if k != "criterion.empty_weight"}
    path = tmp_path / "ddp.pth"
    torch.save(sd, path)
    load_checkpoint(build_model("fastinst-d1-r50"), path)


def test_wrong_variant_names_the_variant(d1, tmp_path):
    path = tmp_path / "d1.pth"
    torch.save({"model": d1.state_dict()}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(build_model("fastinst-d3-r50"), path)
    msg = str(e.value)
    assert "\n" not in msg and "d1.pth" in msg
    assert "fastinst_R50_ppm-fpn_x1_576" in msg and "missing" in msg


def test_truncated_and_garbage_files(d1, tmp_path):
    path = tmp_path / "full.pth"
    torch.save({"model": d1.state_dict()}, path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    for bad, word in [(cut, "truncated"), (tmp_path / "zero.pth", "empty"), (tmp_path / "text.pth", "")]:
        if bad.name == "zero.pth":
            bad.write_bytes(b"")
        if bad.name == "text.pth":
            bad.write_text("hello, not a checkpoint")
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(build_model("fastinst-d1-r50"), bad)
        assert bad.name in str(e.value) and word in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="no such"):
        read_checkpoint(tmp_path / "absent.pth")


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/fastinst_pwned",))


def test_malicious_pickles_are_refused(tmp_path):
    import os

    marker = "/tmp/fastinst_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    pth = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Boom()}, pth)
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"model": {"x": np.zeros(1)}, "payload": _Boom()}))
    for path in (pth, pkl):
        with pytest.raises(CheckpointError, match="refused"):
            read_checkpoint(path)
    assert not os.path.exists(marker)


def test_torchvision_resnet50_backbone_matches_torchvision_forward(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    for m in tv.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(tv.state_dict(), path)
    model = build_model("fastinst-d1-r50").eval()
    load_backbone(model, path)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = model.backbone(x)
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        h = tv.layer1(h)
        c3 = tv.layer2(h)
        c4 = tv.layer3(c3)
        c5 = tv.layer4(c4)
    for a, b in [(ours["res3"], c3), (ours["res4"], c4), (ours["res5"], c5)]:
        assert (a - b).abs().max() <= 1e-5 * b.abs().max(), float((a - b).abs().max() / b.abs().max())


def test_detectron2_pkl_and_timm_vd_backbones(tmp_path):
    torch.manual_seed(1)
    tv = torchvision.models.resnet101()
    from fastinst.backbone_weights import torchvision_to_detectron2

    d2 = {torchvision_to_detectron2(k): v.numpy() for k, v in tv.state_dict().items()}
    d2 = {k: v for k, v in d2.items() if k}
    pkl = tmp_path / "R-101.pkl"
    pkl.write_bytes(pickle.dumps({"model": d2, "__author__": "torchvision", "matching_heuristics": True}))
    model = build_model("fastinst-d3-r101")
    load_backbone(model, pkl)
    assert torch.equal(model.backbone.res4[22].conv2.weight, tv.layer3[22].conv2.weight)
    # timm resnet50d names are the vd backbone's own names (+ fc and BN counters, which are dropped)
    vd = build_model("fastinst-d1-r50vd-dcn")
    src = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in vd.backbone.state_dict().items()
        if "conv2_offset" not in k
    }
    src["fc.weight"] = torch.zeros(1000, 2048)
    src["layer1.0.bn1.num_batches_tracked"] = torch.tensor(5)
    path = tmp_path / "resnet50d_ra2-464e36ba.pth"
    torch.save(src, path)
    fresh = build_model("fastinst-d1-r50vd-dcn")
    load_backbone(fresh, path)
    assert torch.equal(fresh.backbone.layer3[0].conv2.weight, src["layer3.0.conv2.weight"])
    assert torch.count_nonzero(fresh.backbone.layer3[0].conv2_offset.weight) == 0
    with pytest.raises(CheckpointError, match="wrong depth"):
        load_backbone(build_model("fastinst-d1-r50"), pkl)
