"""FastInst decoder (`fastinst.model.decoder`): outputs in eval and training, IA-guided query selection, masks.

Most tests use a narrow decoder (32 channels, 3 classes, 9 IA queries + 2 auxiliary, 4 heads) on the stride
8/16/32 maps of a 64x96 image; `test_tiny_forward_per_variant` runs every published variant (and the demo) end to
end at 64x96. The numbers are checked against the official implementation elsewhere (tests/model/test_parity.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastinst import build_model
from fastinst.config import VARIANTS
from fastinst.model.decoder import FastInstDecoder, QueryProposal

DIM, K, Q, AUX, HEADS = 32, 3, 9, 2, 4


def _decoder(layers: int) -> FastInstDecoder:
    torch.manual_seed(0)
    return FastInstDecoder(DIM, K, Q, AUX, HEADS, dim_feedforward=64, dec_layers=layers)


def _feats(batch: int = 2, h: int = 64, w: int = 96) -> list[torch.Tensor]:
    """[E5, E4, E3] of an h×w image."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, DIM, h // s, w // s, generator=g) for s in (32, 16, 8)]


@pytest.mark.parametrize("layers", [1, 3])
def test_eval_outputs(layers):
    out = _decoder(layers).eval()(_feats())
    assert out["pred_logits"].shape == (2, Q, K + 1)
    assert out["pred_masks"].shape == (2, Q, 8, 12)  # mask logits at stride 8
    assert out["proposal_cls_logits"].shape == (2, K + 1, 4, 6)  # the IA classifier at stride 16
    idx = out["query_proposal_indices"]
    assert idx.shape == (2, Q) and idx.dtype == torch.int64 and 0 <= idx.min() and idx.max() < 4 * 6
    assert all(len(set(row.tolist())) == Q for row in idx)  # Q distinct stride-16 cells per image
    assert out["query_locations"] is None and out["decoder_matching"] is None
    # stage 0 (the raw IA-guided queries) and layers 0..L-2; in eval the class head runs at the last stage only
    assert len(out["aux_outputs"]) == layers
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"] is None and aux["pred_masks"].shape == (2, Q, 8, 12)
        assert aux["pred_matching_indices"] is None
    assert all(torch.isfinite(t).all() for t in (out["pred_logits"], out["pred_masks"]))


def _targets(batch: int = 2, h: int = 64, w: int = 96) -> list[dict]:
    out = []
    for b in range(batch):
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, 8 : 40 + b, 16:60] = True
        masks[1, 30:64, 50 - b : 90] = True
        out.append({"labels": torch.tensor([0, 2]), "masks": masks})
    return out


@pytest.mark.parametrize("layers", [1, 3])
def test_training_outputs_and_gt_guided_pass(layers):
    dec = _decoder(layers).train()
    targets = _targets()
    matching = [(torch.tensor([4, 1]), torch.tensor([0, 1])), (torch.tensor([0]), torch.tensor([1]))]
    calls = []

    def match(outputs, tgts):
        calls.append((outputs, tgts))
        return matching

    out = dec(_feats(), targets, match)
    # the final layer's prediction is matched once, with the query locations attached
    assert len(calls) == 1 and calls[0][1] is targets
    assert calls[0][0]["pred_logits"].shape == (2, Q, K + 1) and calls[0][0]["pred_masks"].shape == (2, Q, 8, 12)
    assert out["decoder_matching"] is matching
    loc = out["query_locations"]
    assert loc.shape == (2, Q, 2) and torch.equal(calls[0][0]["query_locations"], loc)
    idx = out["query_proposal_indices"]  # (x, y) on linspace(0, 1) grids of the 4x6 stride-16 map
    torch.testing.assert_close(loc, torch.stack([(idx % 6) / 5, (idx // 6) / 3], -1))
    # aux outputs: L GT-guided re-runs (supervised with the matching), then stage 0 and layers 0..L-2
    aux = out["aux_outputs"]
    assert len(aux) == 2 * layers
    assert [a["pred_matching_indices"] is matching for a in aux] == [True] * layers + [False] * layers
    assert all(a["pred_matching_indices"] is None for a in aux[layers:])
    for a in aux:
        assert set(a) == {"query_locations", "pred_logits", "pred_masks", "pred_matching_indices"}
        assert a["pred_logits"].shape == (2, Q, K + 1) and a["pred_masks"].shape == (2, Q, 8, 12)
        assert a["query_locations"] is loc
    # every parameter takes part in training
    loss = out["pred_logits"].sum() + out["pred_masks"].sum() + out["proposal_cls_logits"].sum()
    loss = loss + sum(a["pred_logits"].sum() + a["pred_masks"].sum() for a in aux)
    loss.backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_fewer_stride16_cells_than_queries():
    """A 32x64 image has 2x4 = 8 stride-16 cells for 9 queries: all 8 are taken, the masks follow."""
    out = _decoder(1).eval()(_feats(1, 32, 64))
    assert out["query_proposal_indices"].shape == (1, 8)
    assert out["pred_logits"].shape == (1, 8, K + 1) and out["pred_masks"].shape == (1, 8, 4, 8)


# -- IA-guided query selection (SPEC §2.4.4) -------------------------------------------------------------------------


class _Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def _ia_scores(logits: torch.Tensor) -> torch.Tensor:
    """SPEC §2.4.4 spelled out with loops: (K+1, h, w) logits -> (h·w,) selection scores."""
    fg = logits.softmax(0)[:-1]
    winner = fg.argmax(0)
    h, w = winner.shape
    scores = []
    for y in range(h):
        for x in range(w):
            c = winner[y, x]
            p = fg[c, y, x]
            local_max = bool(p >= 1e-6)
            for yy in range(max(y - 1, 0), min(y + 2, h)):
                for xx in range(max(x - 1, 0), min(x + 2, w)):
                    kept = fg[c, yy, xx] if winner[yy, xx] == c else 0.0  # only the winner's map keeps a pixel
                    local_max &= bool(p >= kept)
            scores.append(float(p) + (1.0 if local_max else 0.0))
    return torch.tensor(scores)


def test_query_selection_matches_the_spec_rule():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, K + 1, 4, 6, generator=g) * 3
    qp = QueryProposal(DIM, K, 7)
    qp.conv_proposal_cls_logits = _Fixed(logits)
    e4, pos16 = torch.randn(2, DIM, 4, 6, generator=g), torch.randn(1, DIM, 4, 6, generator=g)
    queries, qpos, idx, out_logits, locations = qp(e4, pos16)
    assert out_logits is logits
    for b in range(2):
        expected = _ia_scores(logits[b]).topk(7).indices
        assert idx[b].tolist() == expected.tolist()
        # the queries are the raw E4 vectors at those cells, their positions the stride-16 positional map's
        assert torch.equal(queries[:, b], e4[b].flatten(1)[:, idx[b]].T)
        assert torch.equal(qpos[:, b], pos16[0].flatten(1)[:, idx[b]].T)
    assert queries.shape == qpos.shape == (7, 2, DIM) and locations.shape == (2, 7, 2)


def test_local_maximum_bonus_outranks_probability():
    """Four cells in a row, (class 0, class 1, background) probabilities as below. Cell 0 (0.9) sits next to a
    higher class-0 cell: no +1. Cell 2 wins class 1, so its 0.2 for class 0 is dropped from the class-0 map, and
    cells 1 and 3 are maxima of that map (cell 3 at only 0.04); cell 2 is the maximum of the class-1 map. Scores
    0.9, 1.95, 1.5, 1.04: order 1, 2, 3, 0. (Keeping every class map instead would make cell 0 a class-1 maximum,
    1.06, and take cell 3's bonus: order 1, 2, 0, 3.)"""
    probs = torch.tensor([[0.9, 0.06, 0.04], [0.95, 0.02, 0.03], [0.2, 0.5, 0.3], [0.04, 0.01, 0.95]])
    logits = probs.log().T.reshape(1, 3, 1, 4)
    qp = QueryProposal(DIM, 2, 4)
    qp.conv_proposal_cls_logits = _Fixed(logits)
    _, _, idx, _, _ = qp(torch.randn(1, DIM, 1, 4), torch.randn(1, DIM, 1, 4))
    assert idx.tolist() == [[1, 2, 3, 0]]


# -- attention masks (SPEC §2.4.6, §2.4.9) ---------------------------------------------------------------------------


def test_attention_mask_opens_aux_rows_and_full_rows_and_repeats_per_head():
    dec = FastInstDecoder(8, 2, 4, num_aux_queries=1, nheads=2, dim_feedforward=16, dec_layers=1)
    t, f = True, False
    blocked = torch.tensor([[[t, f, t], [t, t, t]], [[f, f, f], [f, t, f]]])  # (B=2, N=2, HW=3)
    mask = dec.attention_mask(blocked)
    image0 = torch.tensor([[t, f, t], [f, f, f], [f, f, f]])  # the full row is opened, the aux row never blocked
    image1 = torch.tensor([[f, f, f], [f, t, f], [f, f, f]])
    assert mask.shape == (4, 3, 3) and mask.dtype == torch.float32  # additive: -inf blocks, 0 opens
    assert set(mask.unique().tolist()) == {float("-inf"), 0.0}
    for i, expected in enumerate([image0, image0, image1, image1]):  # index b·heads + h
        assert torch.equal(mask[i] == float("-inf"), expected), i


def test_attention_mask_is_made_once_in_the_dtype_attention_runs_in():
    """One image: the heads share one copy of the mask (a stride-0 view, not nheads copies); under autocast it is
    made in autocast's dtype (a float32 mask would be cast, and so copied per head, inside attention); and the
    cross-attention layer gives the same output with it as with the bool mask it stands for."""
    torch.manual_seed(0)
    dec = FastInstDecoder(8, 2, 4, num_aux_queries=1, nheads=2, dim_feedforward=16, dec_layers=1)
    blocked = torch.rand(1, 2, 5) < 0.5
    mask = dec.attention_mask(blocked)
    assert mask.shape == (2, 3, 5) and mask.stride(0) == 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dec.attention_mask(blocked).dtype == torch.bfloat16
    layer = dec.transformer_query_cross_attention_layers[0].eval()
    q, x = torch.randn(3, 1, 8), torch.randn(5, 1, 8)
    qpos, pos = torch.randn(3, 1, 8), torch.randn(5, 1, 8)
    with torch.no_grad():
        additive = layer(q, x, attn_mask=mask, pos=pos, query_pos=qpos)
        boolean = layer(q, x, attn_mask=(mask == float("-inf")).contiguous(), pos=pos, query_pos=qpos)
    assert torch.equal(additive, boolean)


def test_gt_attention_mask_samples_the_gt_at_stride_8():
    """Padded 16x24 GT masks on a 2x3 stride-8 grid: nearest sampling reads pixels (8r, 8c). Query 2 matches GT 0
    (pixel (8, 0) inside: only cell (1, 0) open); query 0 matches GT 1, which no sampled pixel hits (its row would
    be all blocked, so it is opened); query 1 and the auxiliary query are unmatched: open everywhere."""
    dec = FastInstDecoder(8, 2, 4, num_aux_queries=1, nheads=1, dim_feedforward=16, dec_layers=1)
    masks = torch.zeros(2, 16, 24, dtype=torch.bool)
    masks[0, 8:16, 0:8] = True
    masks[1, 3, 3] = True
    matching = [(torch.tensor([2, 0]), torch.tensor([0, 1]))]
    mask = dec.gt_attention_mask(matching, [{"labels": torch.tensor([0, 1]), "masks": masks}], (2, 3), 3)
    t, f = True, False
    expected = torch.tensor([[f] * 6, [f] * 6, [t, t, t, f, t, t], [f] * 6])
    assert mask.shape == (1, 4, 6) and torch.equal(mask[0] == float("-inf"), expected)


# -- every variant, end to end ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_tiny_forward_per_variant(name):
    """A 64x96 image through each variant's backbone, pixel decoder and decoder (eval): 4x6 = 24 stride-16 cells
    cap the queries below the configured count; one aux output per stage before the last."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    m = model.cfg.model
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        images, _ = model.preprocess([{"image": image}])
        out = model.sem_seg_head.predictor(model.features(images))
    q = min(m.num_queries, 24)
    assert out["pred_logits"].shape == (1, q, m.num_classes + 1)
    assert out["pred_masks"].shape == (1, q, 8, 12)
    assert out["proposal_cls_logits"].shape == (1, m.num_classes + 1, 4, 6)
    assert len(out["aux_outputs"]) == m.dec_layers
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_masks"]).all()
