"""FLOPs in the fvcore convention (one multiply-add = one flop), counted while the model runs.

Counted: convolutions (including the deformable ones, as their dense MACs), matrix products (linear, einsum, bmm and
the attention inside `scaled_dot_product_attention`), normalisation (eval BatchNorm 2/element, 1 without affine
terms, 5/4 in training; Group/LayerNorm 5/element, 4 without affine terms), bilinear upsampling (4/output element),
nearest upsampling (1/output element) and adaptive average pooling (1/input element) — fvcore's per-op rules.
Everything else (activations, additions, softmax, pooling by max, ...) counts zero, as in fvcore.

Most rules act on the ATen ops the model dispatches. Two act on the `torch.nn.functional` call instead, because
ATen picks the op by device and size: `F.batch_norm` (cuDNN's op on CUDA, the native one on CPU) and
`F.adaptive_avg_pool2d` (a plain `mean` for a 1×1 output). `FrozenBatchNorm2d` (a mul and an add) counts as the
eval batch_norm it stands for, 2/element, when its module is inside the one given to `FlopCounter`.

`count_flops(model, h, w)` runs one eval forward on an h×w image and adds the official post-processing (all Q mask
logits upsampled to the padded size, then resized to the original size), as the official numbers do.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
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


def _affine_norm(weight_index: int):
    """fvcore's norm rule: 5 flops per input element with affine terms, 4 without."""
    return lambda a, o: (5 if a[weight_index] is not None else 4) * _numel(a[0])


# ATen op (overload packet name) -> flops from (args, first output)
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
    "native_group_norm": _affine_norm(1),  # (input, weight, bias, N, C, HxW, group, eps)
    "native_layer_norm": _affine_norm(2),  # (input, normalized_shape, weight, bias, eps)
    "upsample_bilinear2d": lambda a, o: 4 * o.numel(),
    "upsample_nearest2d": lambda a, o: o.numel(),
}


def _arg(args, kwargs, index: int, name: str, default=None):
    return args[index] if len(args) > index else kwargs.get(name, default)


def _batch_norm(args, kwargs, out) -> int:
    """F.batch_norm(input, running_mean, running_var, weight, bias, training, ...): fvcore's batch_norm rule."""
    affine = _arg(args, kwargs, 3, "weight") is not None
    if _arg(args, kwargs, 5, "training", False):
        return (5 if affine else 4) * out.numel()
    return (2 if affine else 1) * out.numel()


# torch.nn.functional function -> (name in `by_op`, flops from (args, kwargs, output))
_FUNCTION_RULES = {
    F.batch_norm: ("batch_norm", _batch_norm),
    F.adaptive_avg_pool2d: ("adaptive_avg_pool2d", lambda a, kw, o: _numel(a[0])),
}


class _FunctionCounter(TorchFunctionMode):
    """The `torch.nn.functional`-level half of `FlopCounter` (see the module docstring)."""

    def __init__(self, by_op: Counter):
        super().__init__()
        self.by_op = by_op

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = _FUNCTION_RULES.get(func)
        if rule is not None:
            self.by_op[rule[0]] += int(rule[1](args, kwargs, out))
        return out


class FlopCounter(TorchDispatchMode):
    """Context manager; after the block, `.total` is the flop count and `.by_op` a per-op Counter.

    `FlopCounter(module)` also counts the `FrozenBatchNorm2d` layers inside `module` (2 flops per element)."""

    def __init__(self, module: nn.Module | None = None):
        super().__init__()
        self.by_op: Counter = Counter()
        self._frozen = [m for m in module.modules() if isinstance(m, FrozenBatchNorm2d)] if module is not None else []
        self._functions = _FunctionCounter(self.by_op)
        self._hooks: list = []

    def __enter__(self):
        self._hooks = [m.register_forward_hook(self._count_frozen_bn) for m in self._frozen]
        self._functions.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._functions.__exit__(*exc)
            for h in self._hooks:
                h.remove()
            self._hooks = []

    def _count_frozen_bn(self, module, inputs, out) -> None:
        """FrozenBN runs as mul + add; fvcore counts the equivalent eval batch_norm op as 2 flops per element."""
        self.by_op["frozen_batch_norm"] += 2 * out.numel()

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


def postprocess_flops(num_queries: int, padded: tuple[int, int], original: tuple[int, int]) -> int:
    """The official inference's two bilinear resizes of all Q stride-8 mask logits: to the padded input size, then
    (cropped to the image) to the original image size; 4 flops per output element each."""
    return 4 * num_queries * (padded[0] * padded[1] + original[0] * original[1])


def count_flops(model, height: int, width: int, original: tuple[int, int] | None = None) -> dict:
    """Flops of one h×w image through `model` (eval) in the fvcore convention, per part and total.

    `original` is the size of the image before the test resize, which the masks are resized back to (default:
    h×w itself). The model may live on the meta device: shapes are all that is counted."""
    model = model.eval()
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    batch = [{"image": image, "height": height, "width": width}]
    parts = {}
    with torch.no_grad():
        images, _ = model.preprocess(batch)
        with FlopCounter(model.backbone) as counter:
            feats = model.backbone(images)
        parts["backbone"] = counter.total
        with FlopCounter(model.sem_seg_head.pixel_decoder) as counter:
            pix = model.sem_seg_head.pixel_decoder(feats)
        parts["pixel_decoder"] = counter.total
        with FlopCounter(model.sem_seg_head.predictor) as counter:
            out = model.sem_seg_head.predictor(pix)
        parts["decoder"] = counter.total
    padded = tuple(images.shape[-2:])
    parts["postprocess"] = postprocess_flops(out["pred_masks"].shape[1], padded, original or (height, width))
    parts["total"] = sum(parts.values())
    return parts
