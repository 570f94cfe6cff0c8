"""Shared test helpers: where the official-implementation fixtures live, and small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("FASTINST_FIXTURES", REPO.parent / "shared" / "fixtures"))
FIXTURE_DIRS = sorted(p for p in FIXTURES.glob("*/") if (p / "reference.npz").is_file()) if FIXTURES.is_dir() else []

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def fixture_dirs():
    if not FIXTURE_DIRS:
        pytest.skip(f"no fixtures under {FIXTURES}")
    return FIXTURE_DIRS
