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


def class_metadata(cfg: Config) -> tuple[list[str], list[int]]:
    """(names, category ids) of a config: its own, else COCO's for 80 classes, else class0.. and 1..N."""
    from ..data.coco_classes import COCO_CATEGORY_IDS, COCO_NAMES

    n = cfg.model.num_classes
    names = list(cfg.model.class_names) or (list(COCO_NAMES) if n == 80 else [f"class{i}" for i in range(n)])
    ids = list(cfg.model.category_ids) or (list(COCO_CATEGORY_IDS) if n == 80 else list(range(1, n + 1)))
    return names, ids


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
        names, ids = class_metadata(cfg)
        self.names: list[str] = names  # contiguous class index -> name
        self.category_ids: list[int | None] = list(ids)  # -> dataset id (None: a class the dataset matched lacks)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batch: list[dict]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """uint8 (3, h, w) images -> normalised (B, 3, Hpad, Wpad) on the model's device, zero-padded bottom/right to
        a multiple of 32, and the [(h, w)] before padding (`fastinst.model.preprocess.normalize_and_pad`)."""
        from .preprocess import normalize_and_pad

        images = [torch.as_tensor(d["image"]).to(self.device) for d in batch]  # (3, h, w) uint8 each
        return normalize_and_pad(images, self.pixel_mean, self.pixel_std, self.size_divisibility)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalised padded batch -> [E5, E4, E3]."""
        return self.sem_seg_head.pixel_decoder(self.backbone(images))

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network alone (eval): normalised padded (B, 3, H, W) -> pred_logits (B, Q, K+1), pred_masks (B, Q, H/8,
        W/8); the same contract as the exported runtimes' `forward_raw` (`fastinst.runtimes`)."""
        out = self.sem_seg_head.predictor(self.features(images))
        return out["pred_logits"], out["pred_masks"]

    def targets(self, batch: list[dict], padded: tuple[int, int]) -> list[dict]:
        out = []
        for d in batch:
            inst = d["instances"]
            masks = inst["masks"].to(self.device)
            full = torch.zeros((masks.shape[0], *padded), dtype=torch.bool, device=self.device)
            full[:, : masks.shape[1], : masks.shape[2]] = masks.bool()
            out.append({"labels": inst["labels"].to(self.device).long(), "masks": full})
        return out

    def forward(self, batch: list[dict], rand=None, score_threshold: float = 0.0, max_detections: int | None = None):
        """Training: weighted losses (needs `instances` in each item). Eval: instances per image (see `postprocess`).

        `batch` items: `image` uint8 (3, h, w) already resized, `height`/`width` the size masks are returned at.
        """
        images, sizes = self.preprocess(batch)  # (B, 3, Hpad, Wpad) normalised, [(h, w)] before padding
        feats = self.features(images)  # [E5, E4, E3]: strides 32, 16, 8
        predictor = self.sem_seg_head.predictor
        if self.training:
            rand = rand or torch.rand
            targets = self.targets(batch, (images.shape[-2], images.shape[-1]))

            def match(outputs, tgts):
                return self.criterion.matcher(outputs, tgts, rand=rand)

            outputs = predictor(feats, targets, match)
            self.last_matching = {"decoder_gt_guided": outputs["decoder_matching"]}
            losses = self.criterion(outputs, targets, rand=rand)
            weights = self.criterion.weight_dict
            return {k: v * weights[k] for k, v in losses.items() if k in weights}
        outputs = predictor(feats)  # pred_logits (B, Q, K+1), pred_masks (B, Q, Hpad/8, Wpad/8)
        return self.postprocess(outputs, batch, images.shape[-2:], sizes, score_threshold, max_detections)

    def postprocess(
        self,
        outputs: dict,
        batch: list[dict],
        padded,
        sizes,
        score_threshold: float = 0.0,
        max_detections: int | None = None,
    ) -> list[dict]:
        """Per image: `masks` bool (n, H0, W0) at the item's height/width, `scores`, `labels`, `queries` (n,), best
        first; n <= `max_detections` (default 100), every score >= `score_threshold` (0: the official top-k)."""
        k = max_detections or self.max_detections
        results = []
        for i, d in enumerate(batch):
            original = (int(d.get("height", sizes[i][0])), int(d.get("width", sizes[i][1])))
            logits, masks = outputs["pred_logits"][i], outputs["pred_masks"][i]  # (Q, K+1), (Q, Hpad/8, Wpad/8)
            results.append(instances(logits, masks, tuple(padded), sizes[i], original, k, score_threshold))
        return results

    @torch.inference_mode()
    def detect(
        self, images: list[np.ndarray], score_threshold: float = 0.0, max_detections: int | None = None
    ) -> list[dict]:
        """RGB uint8 images (H0, W0, 3) -> per image `masks` bool (n, H0, W0), `scores`, `labels`, `queries` (n,).

        The whole image -> instances path: the official test resize, normalise + pad, network, post-processing back
        to each image's own size. Runs in eval mode (the mode is restored afterwards); one batch.
        """
        was_training = self.training
        self.eval()
        short, max_size = self.cfg.input.min_size_test, self.cfg.input.max_size_test
        batch = [to_model_input(np.ascontiguousarray(im), short, max_size) for im in images]  # resized (3, h, w)
        try:
            return self(batch, score_threshold=score_threshold, max_detections=max_detections)
        finally:
            self.train(was_training)
