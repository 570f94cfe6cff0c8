"""Shared test helpers: where the parity fixtures live.

* `COMPACT_FIXTURE` is in the repository (tests/parity/data, written by tools/make_compact_fixture.py): the D1-R50
  fixture's outputs, instances and training losses, so a clean clone always checks the model's numbers.
* `FIXTURE_DIRS` are the full official fixtures under `../shared/fixtures` (or `$FASTINST_FIXTURES`), checked
  where they exist; `SHARED_MISSING` says why they were not.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the `parity` helper package, for tools/ as for tests

FIXTURES = Path(os.environ.get("FASTINST_FIXTURES", REPO.parent / "shared" / "fixtures"))
FIXTURE_DIRS = sorted(p for p in FIXTURES.glob("*/") if (p / "reference.npz").is_file()) if FIXTURES.is_dir() else []
SHARED_MISSING = (
    ""
    if FIXTURE_DIRS
    else f"no full official fixtures under {FIXTURES} (set FASTINST_FIXTURES to a folder of them); "
    "only the in-repo compact fixture was checked"
)
COMPACT_FIXTURE = REPO / "tests" / "parity" / "data" / "fastinst_R50_ppm-fpn_x1_576-s0"
PARITY_FIXTURES = [COMPACT_FIXTURE, *FIXTURE_DIRS]

torch.set_num_threads(min(2, torch.get_num_threads()))


def fixture_id(path: Path) -> str:
    return f"compact:{path.name}" if path == COMPACT_FIXTURE else path.name


@pytest.fixture(scope="session")
def demo_weights(tmp_path_factory) -> str:
    """A `fastinst-demo` checkpoint with seed-0 random weights (the 80 COCO classes), for the command tests."""
    import fastinst

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("demo") / "demo.pth"
    torch.save({"model": fastinst.build_model("fastinst-demo").state_dict()}, path)
    return str(path)


@pytest.fixture(scope="session")
def _cache_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fastinst_cache")


@pytest.fixture(autouse=True)
def _private_cache(_cache_folder, monkeypatch) -> None:
    """No test writes into the user's ~/.cache/fastinst (labelme's embedded images, downloads): `$FASTINST_CACHE`
    points into the test session's own folder unless a test sets it itself."""
    monkeypatch.setenv("FASTINST_CACHE", str(_cache_folder))
