"""Compare our model with the official implementation's recorded outputs (`shared/fixtures/<config>-s<seed>/`).

`check_fixture(dir)` builds the variant named in the fixture's metadata, loads the synthetic weights that
`synthetic_weights.py` makes from its keys.txt and seed, runs the stored photos through our pre-processing and model,
and returns one `Row` per stored tensor (max abs diff, scale, tolerance, verdict). Training keys (`train.*`) are
checked by `fastinst.losses.parity` when present.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import canonical_name
from .errors import FastInstError
from .model.preprocess import resize_image, resize_shape


@dataclass
class Row:
    name: str
    diff: float
    scale: float
    tol: float
    ok: bool
    note: str = ""

    def format(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        return f"{self.name:<46} {self.diff:>11.3e} {self.scale:>11.3e} {self.tol:>10.1e}  {verdict}  {self.note}"


def synthetic_weights_fn(fixture_dir: Path):
    """Import `synthetic_weights` from the fixture folder's parent (where the fixtures README puts it)."""
    for cand in (fixture_dir / "synthetic_weights.py", fixture_dir.parent / "synthetic_weights.py"):
        if cand.is_file():
            spec = importlib.util.spec_from_file_location("_fixture_synthetic_weights", cand)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod.synthetic_weights
    raise FastInstError(f"{fixture_dir}: synthetic_weights.py not found next to the fixture")


def load_fixture(fixture_dir: str | Path):
    """-> (npz, meta dict, model with the fixture's synthetic weights, in eval mode)."""
    from . import build_model

    fixture_dir = Path(fixture_dir)
    npz_path = fixture_dir / "reference.npz"
    if not npz_path.is_file():
        raise FastInstError(f"{fixture_dir}: no reference.npz (not a fixture directory)")
    npz = np.load(npz_path)
    meta = json.loads(str(npz["meta_json"]))
    model = build_model(canonical_name(meta["config"]))
    weights = synthetic_weights_fn(fixture_dir)(str(fixture_dir / "keys.txt"), int(meta["seed"]))
    keys = list(weights)
    own = list(model.state_dict())
    if keys != own:
        first = next((a, b) for a, b in itertools.zip_longest(keys, own) if a != b)
        raise FastInstError(f"{fixture_dir}: state-dict keys differ from keys.txt (first difference: {first})")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return npz, meta, model.eval()


def _compare(name: str, ours: torch.Tensor | np.ndarray, ref: np.ndarray, rel: float) -> Row:
    ours = np.asarray(ours.detach().float().cpu() if isinstance(ours, torch.Tensor) else ours, dtype=np.float64)
    ref = ref.astype(np.float64)
    if ours.shape != ref.shape:
        return Row(name, float("inf"), 0.0, 0.0, False, f"shape {ours.shape} vs {ref.shape}")
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    diff = float(np.abs(ours - ref).max()) if ref.size else 0.0
    tol = rel * max(scale, 1e-12)
    return Row(name, diff, scale, tol, diff <= tol)


def _subsample(t: torch.Tensor, key: str) -> torch.Tensor:
    """Apply a key's `.every{k}` (channels) / `.everyq{k}` (queries) storage suffix."""
    if m := re.search(r"\.every(q?)(\d+)$", key):
        return t[:, :: int(m.group(2))]
    return t


def _unpack(npz, prefix: str) -> np.ndarray:
    shape = tuple(int(s) for s in npz[prefix + "_shape"])
    bits = npz[prefix + "_packbits"]
    n, hw = shape[0], int(np.prod(shape[1:]))
    return np.unpackbits(bits, axis=1, count=hw).reshape(shape).astype(bool) if n else np.zeros(shape, bool)


def check_fixture(fixture_dir: str | Path, rel32: float = 1e-3, rel16: float = 2e-3) -> list[Row]:
    npz, meta, model = load_fixture(fixture_dir)
    short, max_size = meta["variant"]["min_size_test"], meta["variant"]["max_size_test"]
    rows: list[Row] = []
    batch = []
    n_images = len(meta["images"])
    for i in range(n_images):
        original = npz[f"input.{i}.original"]
        resized = resize_image(original, resize_shape(*original.shape[:2], short, max_size))
        rows.append(_compare(f"input.{i}.resized", resized, npz[f"input.{i}.resized"], 0.0))
        batch.append(
            {
                "image": torch.from_numpy(resized.transpose(2, 0, 1).copy()),
                "height": original.shape[0],
                "width": original.shape[1],
            }
        )
    with torch.inference_mode():
        images, sizes = model.preprocess(batch)
        feats = model.backbone(images)
        pix = model.sem_seg_head.pixel_decoder(feats)
        out = model.sem_seg_head.predictor(pix)
        results = model.postprocess(out, batch, images.shape[-2:], sizes)
    rows.append(
        Row(
            "padded_batch_shape",
            0.0 if list(images.shape) == meta["padded_batch_shape"] else 1.0,
            0,
            0,
            list(images.shape) == meta["padded_batch_shape"],
            str(list(images.shape)),
        )
    )
    named = {
        "eval.backbone.res3": feats["res3"],
        "eval.backbone.res4": feats["res4"],
        "eval.backbone.res5": feats["res5"],
        "eval.pixel_decoder.E5": pix[0],
        "eval.pixel_decoder.E4": pix[1],
        "eval.pixel_decoder.E3": pix[2],
        "eval.proposal_cls_logits": out["proposal_cls_logits"],
        "eval.pred_logits": out["pred_logits"],
        "eval.pred_masks": out["pred_masks"],
    }
    for j, aux in enumerate(out["aux_outputs"]):
        named[f"eval.aux.{j}.pred_masks"] = aux["pred_masks"]
    for key in npz.files:
        base = re.sub(r"\.every(q?)\d+$", "", key)
        if base in named:
            ref = npz[key]
            rows.append(_compare(key, _subsample(named[base], key), ref, rel16 if ref.dtype == np.float16 else rel32))
    if "eval.query_proposal.topk_indices" in npz.files:
        ref = npz["eval.query_proposal.topk_indices"]
        ours = out["query_proposal_indices"].cpu().numpy()
        same = all(set(a.tolist()) == set(b.tolist()) for a, b in zip(ours, ref))
        rows.append(Row("eval.query_proposal.topk_indices", 0.0 if same else 1.0, 0, 0, same, "as sets per image"))
    for i in range(n_images):
        if f"eval.instances.{i}.topk_flat_index" in npz.files:
            rows += _compare_instances(npz, i, results[i], model.num_classes)
    return rows


def _compare_instances(npz, i: int, res: dict, num_classes: int) -> list[Row]:
    p = f"eval.instances.{i}"
    ref_idx = npz[f"{p}.topk_flat_index"]
    ref_scores, ref_masks = npz[f"{p}.scores"], _unpack(npz, f"{p}.pred_masks")
    ours_idx = (res["queries"] * num_classes + res["labels"]).cpu().numpy()
    pos = {int(k): n for n, k in enumerate(ours_idx)}
    same_set = set(pos) == set(ref_idx.tolist())
    worst_iou, worst_score = 1.0, 0.0
    for r, k in enumerate(ref_idx):
        if int(k) not in pos:
            continue
        n = pos[int(k)]
        a, b = res["masks"][n].cpu().numpy(), ref_masks[r]
        union = np.logical_or(a, b).sum()
        iou = 1.0 if union == 0 else np.logical_and(a, b).sum() / union
        worst_iou = min(worst_iou, float(iou))
        worst_score = max(worst_score, abs(float(res["scores"][n]) - float(ref_scores[r])))
    return [
        Row(f"{p} (set of query*K+class)", 0.0 if same_set else 1.0, 0, 0, same_set, f"{len(pos)} instances"),
        Row(f"{p}.masks (1 - worst IoU)", 1.0 - worst_iou, 1.0, 0.01, worst_iou >= 0.99),
        Row(f"{p}.scores", worst_score, float(np.abs(ref_scores).max()), 1e-4, worst_score <= 1e-4),
    ]
