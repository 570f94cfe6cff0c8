"""The slow list in tests/conftest.py (what `make test-fast` leaves out) names files and tests that exist."""

from __future__ import annotations

import re

from conftest import REPO, SLOW_FILES, SLOW_TESTS


def test_every_slow_entry_names_a_test_that_exists():
    missing = [f for f in SLOW_FILES if not (REPO / f).is_file()]
    for entry in SLOW_TESTS:
        path, name = entry.split("::")
        source = (REPO / path).read_text(encoding="utf-8") if (REPO / path).is_file() else ""
        if not re.search(rf"^def {re.escape(name)}\(", source, flags=re.MULTILINE):
            missing.append(entry)
    assert not missing, f"slow entries that name no test (renamed or deleted?): {missing}"
