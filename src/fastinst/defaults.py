"""Defaults that the torch-free command-line parsers and the library share, in one place.

Only the standard library may be imported here: `fastinst <command> --help` reads these without importing torch
(tests/test_cli_surface.py).
"""

from __future__ import annotations

DEFAULT_SCORE_THRESHOLD = 0.3
"""One default for the CLI, the API and the web demo: FastInst always proposes its 100 best (query, class) pairs and
most score near zero. COCO evaluation uses 0 (the official 100 detections), which `fastinst eval` does by itself."""

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""The precisions a model runs in (`--dtype`, `Predictor(dtype=...)`): "auto" picks one per device
(`fastinst.model.fuse.inference_dtype`); the others are the torch dtypes in `fastinst.model.fuse.DTYPES`."""
