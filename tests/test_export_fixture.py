"""`--backend onnxruntime` gives the same instances as PyTorch (and as the official code) on the fixture photos."""

import numpy as np
import torch

from conftest import COMPACT_FIXTURE
from fastinst.export import OnnxModel, export_onnx
from fastinst.model.preprocess import resize_image, resize_shape
from parity.fixture import fixture_model, open_fixture


def test_onnxruntime_instances_equal_pytorch_on_fixture_photos(tmp_path):
    npz = open_fixture(COMPACT_FIXTURE)
    meta, model = npz.meta, fixture_model(npz)
    short, max_size = meta["variant"]["min_size_test"], meta["variant"]["max_size_test"]
    batch = []
    for i in range(len(meta["images"])):
        original = npz[f"input.{i}.original"]
        resized = resize_image(original, resize_shape(*original.shape[:2], short, max_size))
        batch.append(
            {
                "image": torch.from_numpy(resized.transpose(2, 0, 1).copy()),
                "height": original.shape[0],
                "width": original.shape[1],
            }
        )
    with torch.inference_mode():
        ours = model(batch)
    path = export_onnx(model, tmp_path / "d1.onnx", dynamic=True)
    onnx = OnnxModel(path, model.cfg)(batch)
    for i, (a, b) in enumerate(zip(ours, onnx, strict=True)):
        key_a = (a["queries"] * 80 + a["labels"]).tolist()
        key_b = (torch.as_tensor(b["queries"]) * 80 + torch.as_tensor(b["labels"])).tolist()
        assert set(key_a) == set(key_b) == set(npz[f"eval.instances.{i}.topk_flat_index"].tolist())
        order = {k: n for n, k in enumerate(key_b)}
        idx = [order[k] for k in key_a]
        sb = torch.as_tensor(b["scores"])[idx]
        assert torch.allclose(a["scores"], sb, atol=1e-4)
        mb = torch.as_tensor(np.asarray(b["masks"]))[idx]
        inter = (a["masks"] & mb).flatten(1).sum(1).float()
        union = (a["masks"] | mb).flatten(1).sum(1).float().clamp(min=1)
        assert (inter / union).min() >= 0.99
