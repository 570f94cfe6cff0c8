"""FastInst decoder: IA-guided queries, dual-path Transformer layers, prediction heads, GT-mask-guided pass (SPEC §2.4).

In: the pixel decoder's [E5, E4, E3] (B, D, H/s, W/s). Out: a dict with `pred_logits` (B, Q, K+1), `pred_masks`
(B, Q, H/8, W/8) mask logits, `proposal_cls_logits` (B, K+1, H/16, W/16), `query_locations` (B, Q, 2) (training),
and `aux_outputs` — in training the GT-mask-guided re-runs of layers 0..L-1 come first, then the prediction from the
raw IA-guided queries, then the outputs of layers 0..L-2 (the order the official losses are named in).
Sequence tensors are (length, batch, D) as in nn.MultiheadAttention's default layout.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttentionLayer(nn.Module):
    """out = LN(tgt + MHA(tgt + query_pos, memory + pos, memory, mask)); `attn_mask` is added to the attention
    logits (-inf blocks), or True in a bool one blocks."""

    def __init__(self, dim: int, nheads: int):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, nheads, dropout=0.0)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt, memory, attn_mask=None, pos=None, query_pos=None):
        out = self.multihead_attn(tgt + query_pos, memory + pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        return self.norm(tgt + out)


class SelfAttentionLayer(nn.Module):
    """out = LN(tgt + MHA(tgt + query_pos, tgt + query_pos, tgt))."""

    def __init__(self, dim: int, nheads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, nheads, dropout=0.0)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt, query_pos):
        q = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])


class FFNLayer(nn.Module):
    """out = LN(x + linear2(ReLU(linear1(x))))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """`num_layers` Linear layers (`layers.0..`), ReLU between them."""

    def __init__(self, din: int, hidden: int, dout: int, num_layers: int = 3):
        super().__init__()
        dims = [din] + [hidden] * (num_layers - 1) + [dout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class QueryProposal(nn.Module):
    """IA-guided query selection: per-pixel 81-way classifier on E4; the top-N foreground pixels become queries."""

    def __init__(self, dim: int, num_classes: int, num_queries: int):
        super().__init__()
        self.num_queries = num_queries
        self.conv_proposal_cls_logits = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(dim, num_classes + 1, 1)
        )

    def forward(self, e4: torch.Tensor, pos16: torch.Tensor):
        """e4, pos16: (B, D, h, w) -> queries (N, B, D), their pos (N, B, D), flat indices (B, N), logits, locations."""
        logits = self.conv_proposal_cls_logits(e4)  # (B, K+1, h, w)
        b, _, h, w = logits.shape
        with torch.no_grad():
            fg = logits.softmax(1)[:, :-1]  # (B, K, h, w) foreground probabilities
            top = fg.argmax(1, keepdim=True)  # winning class per pixel
            kept = fg * torch.zeros_like(fg).scatter_(1, top, 1.0)  # only the winner's map keeps the pixel
            local_max = (kept >= F.max_pool2d(kept, 3, 1, 1)) & (kept >= 1e-6)  # 3x3 maxima (zero padding)
            score = (kept + local_max.to(kept.dtype)).amax(1).flatten(1)  # (B, h*w): p + 1 at maxima
            k = min(self.num_queries, h * w)
            idx = score.topk(k, dim=1, sorted=True).indices  # (B, N)
        gather = idx.unsqueeze(1).expand(-1, e4.shape[1], -1)  # (B, D, N)
        queries = e4.flatten(2).gather(2, gather).permute(2, 0, 1)  # (N, B, D)
        qpos = pos16.flatten(2).expand(b, -1, -1).gather(2, gather).permute(2, 0, 1)
        ys = torch.linspace(0, 1, h, device=e4.device)[idx // w]
        xs = torch.linspace(0, 1, w, device=e4.device)[idx % w]
        locations = torch.stack([xs, ys], dim=-1)  # (B, N, 2) normalised (x, y)
        return queries, qpos, idx, logits, locations


MatchFn = Callable[[dict, list[dict]], list[tuple[torch.Tensor, torch.Tensor]]]


class FastInstDecoder(nn.Module):
    def __init__(
        self,
        dim: int = 256,
        num_classes: int = 80,
        num_queries: int = 100,
        num_aux_queries: int = 8,
        nheads: int = 8,
        dim_feedforward: int = 1024,
        dec_layers: int = 3,
    ):
        super().__init__()
        self.num_queries, self.num_aux_queries, self.num_layers, self.nheads = (
            num_queries,
            num_aux_queries,
            dec_layers,
            nheads,
        )
        side = round(math.sqrt(num_queries))
        self.meta_pos_embed = nn.Parameter(torch.empty(1, dim, side, side))
        nn.init.trunc_normal_(self.meta_pos_embed, std=0.02)  # official leaves it uninitialised (SPEC §6)
        self.empty_query_features = nn.Embedding(num_aux_queries, dim)
        self.empty_query_pos_embed = nn.Embedding(num_aux_queries, dim)
        self.query_proposal = QueryProposal(dim, num_classes, num_queries)
        L = dec_layers
        self.transformer_query_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(dim, nheads) for _ in range(L)
        )
        self.transformer_query_self_attention_layers = nn.ModuleList(SelfAttentionLayer(dim, nheads) for _ in range(L))
        self.transformer_query_ffn_layers = nn.ModuleList(FFNLayer(dim, dim_feedforward) for _ in range(L))
        self.transformer_mask_cross_attention_layers = nn.ModuleList(CrossAttentionLayer(dim, nheads) for _ in range(L))
        self.transformer_mask_ffn_layers = nn.ModuleList(FFNLayer(dim, dim_feedforward) for _ in range(L))
        for group in (
            self.transformer_query_cross_attention_layers,
            self.transformer_query_self_attention_layers,
            self.transformer_query_ffn_layers,
            self.transformer_mask_cross_attention_layers,
            self.transformer_mask_ffn_layers,
        ):
            for p in group.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        self.decoder_query_norm_layers = nn.ModuleList(nn.LayerNorm(dim) for _ in range(L + 1))
        self.class_embed_layers = nn.ModuleList(MLP(dim, dim, num_classes + 1, 3) for _ in range(L + 1))
        self.mask_embed_layers = nn.ModuleList(MLP(dim, dim, dim, 3) for _ in range(L + 1))
        self.mask_features_layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(L + 1))

    # -- building blocks ------------------------------------------------------------------------------------------

    def heads(
        self, q: torch.Tensor, x: torch.Tensor, stage: int, size: tuple[int, int], with_cls: bool, with_mask: bool
    ):
        """q (Nq, B, D), x (HW8, B, D) -> class logits (B, N, K+1) | None, mask logits (B, N, h8, w8), attn mask."""
        n = q.shape[0] - self.num_aux_queries  # = num_queries unless the image has fewer stride-16 cells
        qn = self.decoder_query_norm_layers[stage](q[:n]).transpose(0, 1)  # (B, N, D)
        cls = self.class_embed_layers[stage](qn) if with_cls else None
        emb = self.mask_embed_layers[stage](qn)  # (B, N, D)
        feats = self.mask_features_layers[stage](x.transpose(0, 1))  # (B, HW8, D)
        # (B, N, D) @ (B, D, HW8): bmm takes the transposed features as they are (einsum copies them first in bf16:
        # 3.9 vs 0.26 ms at 768x576 on an AMX Xeon; the same numbers)
        masks = torch.bmm(emb, feats.transpose(1, 2))  # (B, N, HW8)
        attn = self.attention_mask(masks.detach() < 0) if with_mask else None
        return cls, masks.unflatten(2, size), attn

    def attention_mask(self, blocked: torch.Tensor) -> torch.Tensor:
        """blocked (B, N, HW) for the IA queries -> additive mask (B*heads, N+aux, HW): -inf where blocked, 0 where
        open (aux rows open, full rows opened), made once in the dtype attention runs in (autocast's, else the
        model's) and shared by the heads: a view for one image. Attention would otherwise turn a bool mask into a
        float one per head and cast it (9 of a 120 ms bf16 network on an AMX Xeon, for 8 x 108 x 6912 values)."""
        b, _, hw = blocked.shape
        aux = blocked.new_zeros(b, self.num_aux_queries, hw)
        blocked = torch.cat([blocked, aux], 1)  # (B, N+aux, HW)
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        kind = blocked.device.type  # autocast exists for cpu, cuda, mps, ...; not for the meta device of `flops`
        autocast = torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)
        dtype = torch.get_autocast_dtype(kind) if autocast else self.meta_pos_embed.dtype
        additive = torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill_(blocked, float("-inf"))
        return additive.unsqueeze(1).expand(-1, self.nheads, -1, -1).flatten(0, 1)  # (B*heads, N+aux, HW)

    def layer(self, i: int, q, x, qpos, pos8, attn):
        """One dual-path layer: pixels attend to queries, then queries (masked) to the updated pixels."""
        x = self.transformer_mask_cross_attention_layers[i](x, q, pos=qpos, query_pos=pos8)
        x = self.transformer_mask_ffn_layers[i](x)
        q = self.transformer_query_cross_attention_layers[i](q, x, attn_mask=attn, pos=pos8, query_pos=qpos)
        q = self.transformer_query_self_attention_layers[i](q, query_pos=qpos)
        q = self.transformer_query_ffn_layers[i](q)
        return q, x

    # -- forward --------------------------------------------------------------------------------------------------

    def forward(self, feats: list[torch.Tensor], targets: list[dict] | None = None, match: MatchFn | None = None):
        """feats = [E5, E4, E3]; in training `targets` (labels, masks padded to the batch) and `match` are given."""
        _, e4, e3 = feats
        b, _, h8, w8 = e3.shape
        pos8 = F.interpolate(self.meta_pos_embed, size=(h8, w8), mode="bilinear", align_corners=False)
        pos16 = F.interpolate(self.meta_pos_embed, size=e4.shape[-2:], mode="bilinear", align_corners=False)
        pos8 = pos8.flatten(2).permute(2, 0, 1)  # (HW8, 1, D)
        q, qpos, idx, proposal_logits, locations = self.query_proposal(e4, pos16)  # (N, B, D) x2
        q = torch.cat([q, self.empty_query_features.weight.unsqueeze(1).expand(-1, b, -1)])  # (N+aux, B, D)
        qpos = torch.cat([qpos, self.empty_query_pos_embed.weight.unsqueeze(1).expand(-1, b, -1)])
        x = e3.flatten(2).permute(2, 0, 1)  # (HW8, B, D)
        training = targets is not None
        L = self.num_layers

        cls, masks, attn = self.heads(q, x, 0, (h8, w8), with_cls=training or L == 0, with_mask=L > 0)
        preds = [(cls, masks)]
        memory = [(q, x)]
        matching = None
        for i in range(L):
            q, x = self.layer(i, q, x, qpos, pos8, attn)
            last = i == L - 1
            cls, masks, attn = self.heads(q, x, i + 1, (h8, w8), with_cls=training or last, with_mask=not last)
            preds.append((cls, masks))
            memory.append((q, x))
        guided = []
        if targets is not None and L > 0:
            if match is None:
                raise ValueError("training (targets given) needs a `match` function")
            final = {"pred_logits": preds[-1][0], "pred_masks": preds[-1][1], "query_locations": locations}
            matching = match(final, targets)
            gt_attn = self.gt_attention_mask(matching, targets, (h8, w8), q.shape[0] - self.num_aux_queries)
            for i in range(L):
                gq, gx = self.layer(i, *memory[i + 1], qpos, pos8, gt_attn)
                gcls, gmasks, _ = self.heads(gq, gx, i + 1, (h8, w8), with_cls=True, with_mask=False)
                guided.append((gcls, gmasks))
        out = {
            "proposal_cls_logits": proposal_logits,
            "query_proposal_indices": idx,
            "query_locations": locations if training else None,
            "pred_logits": preds[-1][0],
            "pred_masks": preds[-1][1],
            "pred_matching_indices": None,
            "decoder_matching": matching,
        }
        aux = [(c, m, matching) for c, m in guided] + [(c, m, None) for c, m in preds[:-1]]
        out["aux_outputs"] = [
            {"query_locations": out["query_locations"], "pred_logits": c, "pred_masks": m, "pred_matching_indices": mi}
            for c, m, mi in aux
        ]
        return out

    def gt_attention_mask(self, matching, targets, size, n: int) -> torch.Tensor:
        """Matched queries see only their GT mask (nearest-sampled at stride 8); others see everything."""
        b = len(targets)
        blocked = torch.zeros(b, n, size[0] * size[1], dtype=torch.bool, device=self.meta_pos_embed.device)
        for i, ((src, tgt), t) in enumerate(zip(matching, targets, strict=True)):
            if len(src) == 0:
                continue
            gt = t["masks"][tgt].float().unsqueeze(0)  # (1, n, Hpad, Wpad)
            gt8 = F.interpolate(gt, size=size, mode="nearest")[0].bool().flatten(1)  # (n, HW8)
            blocked[i, src.to(blocked.device)] = ~gt8.to(blocked.device)
        return self.attention_mask(blocked)
