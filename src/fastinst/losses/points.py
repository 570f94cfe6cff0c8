"""Point sampling for the matcher and the mask losses (PointRend-style), and a replayable random source.

* `point_sample` reads a (B, C, H, W) map at normalised (x, y) points in [0, 1] with bilinear `grid_sample`.
* `uncertain_points` picks the points a mask loss is evaluated on: the most uncertain (|logit| smallest) of an
  oversampled uniform set, followed by fresh uniform points.
* `ReplayRand` is a `rand(*shape, device=None)` callable that hands out recorded draws in order, so the fixtures'
  `torch.rand` calls of the official training forward can be reproduced exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

RandFn = Callable[..., torch.Tensor]

__all__ = ["RandFn", "ReplayRand", "point_sample", "uncertain_points"]


def point_sample(input: torch.Tensor, coords: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Bilinearly sample `input` (B, C, H, W) at `coords` (B, P, 2) given as (x, y) in [0, 1] -> (B, C, P).

    Coordinates map to `grid_sample`'s [-1, 1] range (so with `align_corners=False`, 0 and 1 are the outer borders of
    the image, not pixel centres); outside points read zero padding.
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # (B, P, 1, 2)
    out = F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    return out.squeeze(3)  # (B, C, P)


def uncertain_points(
    logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float, rand: RandFn = torch.rand
) -> torch.Tensor:
    """Loss points for mask logits (N, 1, H, W) -> coords (N, num_points, 2) in [0, 1].

    Draws `int(num_points * oversample_ratio)` uniform points, scores each by its uncertainty `-|logit|`, keeps the
    `int(importance_ratio * num_points)` most uncertain (in `topk` order) and appends uniform points for the rest.
    Exactly two `rand` calls are made, in this order: (N, oversampled, 2), then (N, num_random, 2).
    """
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_ratio * num_points)
    num_random = num_points - num_uncertain
    cand = rand(n, num_sampled, 2, device=logits.device)  # (N, S, 2)
    uncertainty = -point_sample(logits, cand, align_corners=False).abs()[:, 0]  # (N, S)
    top = torch.topk(uncertainty, k=num_uncertain, dim=1).indices  # (N, U)
    # Index the flattened candidate list with a per-row offset (equivalent to a gather along dim 1).
    offset = num_sampled * torch.arange(n, dtype=torch.long, device=logits.device)
    flat = (top + offset[:, None]).reshape(-1)  # (N*U,)
    chosen = cand.reshape(-1, 2)[flat].reshape(n, num_uncertain, 2)  # (N, U, 2)
    if num_random <= 0:
        return chosen
    fresh = rand(n, num_random, 2, device=logits.device)  # (N, R, 2)
    return torch.cat([chosen, fresh], dim=1)  # (N, num_points, 2)


class ReplayRand:
    """Replays recorded uniform draws: each call returns the next tensor, which must have the requested shape."""

    def __init__(self, draws: Sequence[torch.Tensor], roles: Sequence[str] | None = None):
        self.draws = [torch.as_tensor(d) for d in draws]
        self.roles = list(roles) if roles is not None else None
        self.position = 0

    @property
    def remaining(self) -> int:
        return len(self.draws) - self.position

    def __bool__(self) -> bool:  # never falsy, so `rand or torch.rand` keeps the replay
        return True

    def __call__(
        self, *shape, device: torch.device | str | None = None, dtype: torch.dtype | None = None, **_: object
    ) -> torch.Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        n = self.position
        if n >= len(self.draws):
            raise RuntimeError(
                f"ReplayRand: call {n} asks for {tuple(shape)} but only {len(self.draws)} draws were recorded"
            )
        draw = self.draws[n]
        if tuple(draw.shape) != tuple(int(s) for s in shape):
            role = f" ({self.roles[n]})" if self.roles else ""
            raise RuntimeError(
                f"ReplayRand: call {n} asks for shape {tuple(shape)} but the recorded draw{role} has "
                f"shape {tuple(draw.shape)}"
            )
        self.position += 1
        return draw.to(device=device, dtype=dtype or draw.dtype)
