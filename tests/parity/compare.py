"""One row per checked quantity: what differs, by how much, against which tolerance; shared by every parity check."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Row", "compare_array", "compare_matching", "format_rows"]


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
        return f"{self.name:<46} {self.diff:>11.3e} {self.scale:>11.3e} {self.tol:>10.1e}  {verdict:<4}  {self.note}"


def format_rows(rows: list[Row]) -> str:
    header = f"{'quantity':<46} {'max|diff|':>11} {'scale':>11} {'tol':>10}  verdict"
    return "\n".join([header, *(r.format() for r in rows)])


def as_float64(x: torch.Tensor | np.ndarray | float) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def compare_array(name: str, ours: torch.Tensor | np.ndarray | float, ref: np.ndarray, rel: float) -> Row:
    """max |ours - ref| against `rel` × max |ref| (a relative-to-scale tolerance, as the fixtures README suggests)."""
    a, b = as_float64(ours), as_float64(ref)
    if a.shape != b.shape:
        return Row(name, float("inf"), 0.0, 0.0, False, f"shape {a.shape} vs {b.shape}")
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if b.size else 0.0
    tol = rel * max(scale, 1e-12)
    return Row(name, diff, scale, tol, diff <= tol)


def compare_matching(name: str, ours: tuple[torch.Tensor, torch.Tensor] | None, ref: np.ndarray) -> Row:
    """A matching `(query_idx, gt_idx)` must be identical to the recorded `[query_idx; gt_idx]`."""
    if ours is None:
        return Row(name, float("inf"), 0.0, 0.0, False, "not produced")
    got = np.stack([as_float64(ours[0]), as_float64(ours[1])]).astype(np.int64).reshape(2, -1)
    same = got.shape == ref.shape and bool((got == ref).all())
    note = "identical" if same else f"ours {got.tolist()} vs ref {ref.tolist()}"[:200]
    return Row(name, 0.0 if same else 1.0, 0.0, 0.0, same, note)
