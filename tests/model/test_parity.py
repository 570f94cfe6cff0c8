"""Eval-mode parity with the official implementation: the in-repo compact fixture always, full fixtures where present.

Tolerances are the fixtures README's (float32 outputs 1e-3 of scale, float16-stored 2e-3, instances as sets with mask
IoU >= 0.99 and |score diff| <= 1e-4), tightened to 1e-4 of scale on the float32 class and proposal logits.
"""

import pytest

from conftest import COMPACT_FIXTURE, FIXTURE_DIRS, PARITY_FIXTURES, SHARED_MISSING, fixture_id
from parity.compare import format_rows
from parity.eval import check_eval
from parity.fixture import fixture_model, open_fixture


@pytest.mark.parametrize("path", PARITY_FIXTURES, ids=fixture_id)
def test_eval_parity(path):
    fx = open_fixture(path)
    rows = check_eval(fx, fixture_model(fx))
    names = {r.name for r in rows}
    assert "padded_batch_shape" in names and "eval.query_proposal.topk_indices" in names
    assert any(n.startswith("eval.pred_logits") for n in names)
    assert any(n.startswith("eval.proposal_cls_logits") for n in names)
    assert any(n.startswith("eval.backbone.res5") for n in names)
    assert any(n.startswith("eval.instances.1") for n in names)
    bad = [r for r in rows if not r.ok]
    assert not bad, format_rows(bad)
    for r in rows:
        if r.name.startswith(("eval.pred_logits", "eval.proposal_cls_logits")):
            assert r.diff <= 1e-4 * r.scale, r.format()


def test_compact_fixture_is_small_and_complete():
    """The in-repo fixture stays under 5 MB and holds what the eval and training checks read."""
    size = sum(p.stat().st_size for p in COMPACT_FIXTURE.iterdir())
    assert size <= 5_000_000
    fx = open_fixture(COMPACT_FIXTURE)
    assert fx.has_training and "train.rand.0.shape" in fx and "eval.instances.0.pred_masks_packbits" in fx


@pytest.mark.skipif(not FIXTURE_DIRS, reason=SHARED_MISSING)
def test_compact_fixture_is_a_faithful_subset_of_the_full_one():
    """Every array of the compact fixture equals (a stride of) the full fixture it was cut from."""
    import re

    import numpy as np

    full_path = next((p for p in FIXTURE_DIRS if p.name == COMPACT_FIXTURE.name), None)
    if full_path is None:
        pytest.skip(f"{COMPACT_FIXTURE.name} is not among the full fixtures")
    compact, full = open_fixture(COMPACT_FIXTURE), open_fixture(full_path)
    for key, value in compact.arrays.items():
        if key == "meta_json":
            continue
        if m := re.fullmatch(r"train\.rand\.(\d+)\.shape", key):
            assert tuple(value) == full[f"train.rand.{m.group(1)}.value"].shape
            continue
        if key in full:
            assert np.array_equal(value, full[key]), key
            continue
        base = re.sub(r"\.every(q?)(\d+)$", "", key)
        step = int(re.search(r"(\d+)$", key).group(1))
        stored = next(k for k in full.arrays if re.fullmatch(re.escape(base) + r"(\.everyq?\d+)?", k))
        have = int(m.group(1)) if (m := re.search(r"(\d+)$", stored)) and stored != base else 1
        assert np.array_equal(value, full[stored][:, :: step // have]), key


@pytest.mark.parametrize("path", PARITY_FIXTURES, ids=fixture_id)
def test_fast_postprocessing_is_the_official_order_bit_for_bit(path):
    """On every parity fixture's fp32 network outputs, `instances` (threshold-first, two masks at a time) returns the
    official order's instances (`instances_reference`) bit for bit: same (query, class) pairs, masks and scores —
    with the official top-k (threshold 0) and filtered at the default 0.3."""
    import torch

    from fastinst.model.postprocess import instances, instances_reference
    from parity.fixture import eval_batch

    fx = open_fixture(path)
    model = fixture_model(fx)
    batch = eval_batch(fx)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))  # torch splits float sums per thread count, the official code's too
    try:
        with torch.inference_mode():
            images, sizes = model.preprocess(batch)
            out = model.sem_seg_head.predictor(model.features(images))
            for i, item in enumerate(batch):
                args = (out["pred_logits"][i], out["pred_masks"][i], tuple(images.shape[-2:]), sizes[i])
                original = (item["height"], item["width"])
                ref = instances_reference(*args, original)
                for threshold in (0.0, 0.3):
                    got = instances(*args, original, score_threshold=threshold)
                    keep = ref["scores"] >= threshold
                    want = {
                        (int(q), int(c)): n
                        for n, (q, c) in enumerate(zip(ref["queries"], ref["labels"], strict=True))
                        if keep[n]
                    }
                    pairs = [(int(q), int(c)) for q, c in zip(got["queries"], got["labels"], strict=True)]
                    assert sorted(pairs) == sorted(want) and (threshold > 0 or len(pairs) == 100)
                    for m, pair in enumerate(pairs):
                        assert torch.equal(got["masks"][m], ref["masks"][want[pair]]), (i, threshold, pair)
                        assert got["scores"][m] == ref["scores"][want[pair]], (i, threshold, pair)
    finally:
        torch.set_num_threads(threads)
