"""FLOPs in the fvcore convention (one multiply-add = one flop), counted at the ATen level while the model runs.

Counted: convolutions (including the deformable ones, as their dense MACs), matrix products (linear, einsum, bmm and
the attention inside `scaled_dot_product_attention`), normalisation (BatchNorm 2/element, Group/LayerNorm
5/element), bilinear upsampling (4/output element), nearest upsampling and adaptive pooling (1/element) — fvcore's
per-op rules. `count_flops(model, h, w)` runs one eval forward on an h×w image and adds the official post-processing
(all Q mask logits upsampled to the padded size, then resized to the original h×w), as the official numbers do.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .model.backbone import FrozenBatchNorm2d


def _numel(x) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else 0


def _conv(args, out) -> int:
    w = args[1]
    return out.numel() * w.shape[1] * math.prod(w.shape[2:])


def _sdpa(args, out) -> int:
    q, k, v = args[:3]
    return q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])


_RULES = {
    "convolution": _conv,
    "mm": lambda a, o: a[0].shape[0] * a[0].shape[1] * a[1].shape[1],
    "addmm": lambda a, o: a[1].shape[0] * a[1].shape[1] * a[2].shape[1],
    "bmm": lambda a, o: a[0].shape[0] * a[0].shape[1] * a[0].shape[2] * a[1].shape[2],
    "baddbmm": lambda a, o: a[1].shape[0] * a[1].shape[1] * a[1].shape[2] * a[2].shape[2],
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "_scaled_dot_product_flash_attention": _sdpa,
    "_scaled_dot_product_efficient_attention": _sdpa,
    "_scaled_dot_product_cudnn_attention": _sdpa,
    "deform_conv2d": lambda a, o: o.numel() * a[1].shape[1] * math.prod(a[1].shape[2:]),
    "_native_batch_norm_legit_no_training": lambda a, o: 2 * _numel(a[0]),
    "native_group_norm": lambda a, o: 5 * _numel(a[0]),
    "native_layer_norm": lambda a, o: 5 * _numel(a[0]),
    "upsample_bilinear2d": lambda a, o: 4 * o.numel(),
    "upsample_nearest2d": lambda a, o: o.numel(),
    "_adaptive_avg_pool2d": lambda a, o: _numel(a[0]),
}


class FlopCounter(TorchDispatchMode):
    """Context manager; after the block, `.total` is the flop count and `.by_op` a per-op Counter."""

    def __init__(self):
        super().__init__()
        self.by_op: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        rule = _RULES.get(func.overloadpacket.__name__)
        if rule is not None:
            first = out[0] if isinstance(out, (tuple, list)) else out
            self.by_op[func.overloadpacket.__name__] += int(rule(args, first))
        return out

    @property
    def total(self) -> int:
        return sum(self.by_op.values())


def count_flops(model, height: int, width: int) -> dict:
    """Flops of one h×w image through `model` (eval) in the fvcore convention, per part and total."""
    model = model.eval()
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    batch = [{"image": image, "height": height, "width": width}]
    parts = {}
    hooks = [m.register_forward_hook(_frozen_bn) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        with torch.no_grad():
            images, sizes = model.preprocess(batch)
            with FlopCounter() as counter:
                feats = model.backbone(images)
            parts["backbone"] = counter.total
            with FlopCounter() as counter:
                pix = model.sem_seg_head.pixel_decoder(feats)
            parts["pixel_decoder"] = counter.total
            with FlopCounter() as counter:
                out = model.sem_seg_head.predictor(pix)
            parts["decoder"] = counter.total
    finally:
        for h in hooks:
            h.remove()
    q = out["pred_masks"].shape[1]
    hp, wp = images.shape[-2:]
    parts["postprocess"] = 4 * q * hp * wp + 4 * q * height * width
    parts["total"] = sum(parts.values())
    return parts


def _frozen_bn(module, inputs, out) -> None:
    """FrozenBN runs as mul+add; fvcore counts the equivalent batch_norm op as 2 flops per element."""
    active = torch.utils._python_dispatch._get_current_dispatch_mode()
    if isinstance(active, FlopCounter):
        active.by_op["frozen_batch_norm"] += 2 * out.numel()
