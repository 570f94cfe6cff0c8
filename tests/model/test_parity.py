"""Eval-mode parity with the official implementation on every shared fixture (SPEC fixtures README tolerances)."""

import pytest

from conftest import FIXTURE_DIRS
from fastinst.parity import check_fixture


@pytest.mark.skipif(not FIXTURE_DIRS, reason="no fixtures")
@pytest.mark.parametrize("fixture", FIXTURE_DIRS, ids=lambda p: p.name)
def test_eval_parity(fixture):
    rows = check_fixture(fixture)
    names = {r.name for r in rows}
    assert {"eval.pred_logits", "eval.proposal_cls_logits", "eval.query_proposal.topk_indices"} <= names
    assert any(n.startswith("eval.backbone.res5") for n in names)
    assert any(n.startswith("eval.instances.1") for n in names)
    bad = [r.format() for r in rows if not r.ok]
    assert not bad, "\n".join(bad)
    # aim: 1e-4 of scale on the float32 network outputs
    for r in rows:
        if r.name in ("eval.pred_logits", "eval.proposal_cls_logits"):
            assert r.diff <= 1e-4 * r.scale, r.format()
