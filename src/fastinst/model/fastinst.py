"""The FastInst meta-architecture: normalise + pad -> backbone -> PPM-FPN -> FastInst decoder -> losses or instances.

`FastInst(cfg)` holds `backbone`, `sem_seg_head.pixel_decoder`, `sem_seg_head.predictor` and `criterion` (also reachable
as `sem_seg_head.predictor.criterion`, as in the official model, so its `empty_weight` buffer is saved twice).
Call it with a list of dicts (see docs/DEVELOPING.md): weighted losses in training, instances in eval.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..losses.criterion import SetCriterion, build_weight_dict
from ..losses.matcher import HungarianMatcher
from .backbone import build_backbone
from .decoder import FastInstDecoder
from .pixel_decoder import PPMFPN
from .postprocess import instances
from .preprocess import to_model_input


class SemSegHead(nn.Module):
    """Container giving the official `sem_seg_head.pixel_decoder` / `sem_seg_head.predictor` key prefixes."""

    def __init__(self, pixel_decoder: PPMFPN, predictor: FastInstDecoder):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor


class FastInst(nn.Module):
    pixel_mean: torch.Tensor  # (3, 1, 1) non-persistent buffers
    pixel_std: torch.Tensor

    def __init__(self, cfg: Config):
        super().__init__()
        m, loss = cfg.model, cfg.loss
        self.cfg = cfg
        self.num_classes = m.num_classes
        self.size_divisibility = m.size_divisibility
        self.backbone = build_backbone(m.backbone, m.depth, m.deform_stages, m.backbone_norm, m.backbone_width)
        pixel_decoder = PPMFPN(self.backbone.out_channels, m.hidden_dim)
        predictor = FastInstDecoder(
            m.hidden_dim, m.num_classes, m.num_queries, m.num_aux_queries, m.nheads, m.dim_feedforward, m.dec_layers
        )
        self.sem_seg_head = SemSegHead(pixel_decoder, predictor)
        matcher = HungarianMatcher(
            loss.class_weight, loss.mask_weight, loss.dice_weight, loss.location_weight, loss.num_points
        )
        num_aux = 2 * m.dec_layers if loss.deep_supervision else 0
        weight_dict = build_weight_dict(
            loss.class_weight, loss.mask_weight, loss.dice_weight, loss.proposal_weight, num_aux
        )
        self.criterion = SetCriterion(
            m.num_classes,
            matcher,
            weight_dict=weight_dict,
            eos_coef=loss.no_object_weight,
            num_points=loss.num_points,
            oversample_ratio=loss.oversample_ratio,
            importance_sample_ratio=loss.importance_sample_ratio,
        )
        predictor.criterion = self.criterion
        self.register_buffer("pixel_mean", torch.tensor(m.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(m.pixel_std).view(3, 1, 1), persistent=False)
        self.max_detections = 100
        self.last_matching: dict = {}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batch: list[dict]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """uint8 CHW images -> normalised (B, 3, Hpad, Wpad), zero-padded bottom/right to a multiple of 32."""
        images = [(d["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for d in batch]
        sizes = [tuple(im.shape[-2:]) for im in images]
        div = self.size_divisibility
        hp = -(-max(s[0] for s in sizes) // div) * div
        wp = -(-max(s[1] for s in sizes) // div) * div
        out = images[0].new_zeros(len(images), 3, hp, wp)
        for i, im in enumerate(images):
            out[i, :, : im.shape[1], : im.shape[2]] = im
        return out, sizes

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalised padded batch -> [E5, E4, E3]."""
        return self.sem_seg_head.pixel_decoder(self.backbone(images))

    def targets(self, batch: list[dict], padded: tuple[int, int]) -> list[dict]:
        out = []
        for d in batch:
            inst = d["instances"]
            masks = inst["masks"].to(self.device)
            full = torch.zeros((masks.shape[0], *padded), dtype=torch.bool, device=self.device)
            full[:, : masks.shape[1], : masks.shape[2]] = masks.bool()
            out.append({"labels": inst["labels"].to(self.device).long(), "masks": full})
        return out

    def forward(self, batch: list[dict], rand=None):
        images, sizes = self.preprocess(batch)
        feats = self.features(images)
        predictor = self.sem_seg_head.predictor
        if self.training:
            rand = rand or torch.rand
            hp, wp = images.shape[-2:]
            targets = self.targets(batch, (hp, wp))

            def match(outputs, tgts):
                return self.criterion.matcher(outputs, tgts, rand=rand)

            outputs = predictor(feats, targets, match)
            self.last_matching = {"decoder_gt_guided": outputs["decoder_matching"]}
            losses = self.criterion(outputs, targets, rand=rand)
            weights = self.criterion.weight_dict
            return {k: v * weights[k] for k, v in losses.items() if k in weights}
        outputs = predictor(feats)
        return self.postprocess(outputs, batch, images.shape[-2:], sizes)

    def postprocess(self, outputs: dict, batch: list[dict], padded, sizes) -> list[dict]:
        results = []
        for i, d in enumerate(batch):
            original = (int(d.get("height", sizes[i][0])), int(d.get("width", sizes[i][1])))
            results.append(
                instances(
                    outputs["pred_logits"][i],
                    outputs["pred_masks"][i],
                    tuple(padded),
                    sizes[i],
                    original,
                    self.max_detections,
                )
            )
        return results

    def predict(self, source, **kwargs):
        """Images / paths / arrays -> `Results` objects (see `fastinst.engine.predictor.Predictor.predict`)."""
        from ..engine.predictor import Predictor

        return Predictor(self, device=str(self.device)).predict(source, **kwargs)

    @torch.inference_mode()
    def inference(self, images: list[np.ndarray], batch_size: int = 1) -> list[dict]:
        """RGB uint8 (H, W, 3) arrays -> per image `masks` bool (K, H, W), `scores` (K,), `labels` (K,) (eval mode)."""
        was_training = self.training
        self.eval()
        short, max_size = self.cfg.input.min_size_test, self.cfg.input.max_size_test
        results = []
        for s in range(0, len(images), batch_size):
            batch = [to_model_input(im, short, max_size) for im in images[s : s + batch_size]]
            results += self(batch)
        self.train(was_training)
        return results
