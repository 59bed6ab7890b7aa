"""Shared test helpers: where the real hand photos live, and skipping when they are absent."""
from __future__ import annotations

from pathlib import Path

import pytest

HANDDATA = Path(__file__).resolve().parents[1].parent / "shared" / "handdata"


def handdata_available() -> bool:
    return (HANDDATA / "README.md").is_file()


@pytest.fixture
def handdata() -> Path:
    """The real photo sets (../shared/handdata); the test is skipped where they are not present."""
    if not handdata_available():
        pytest.skip(f"real hand photos not present at {HANDDATA}")
    return HANDDATA


def pytest_collection_modifyitems(config, items):
    """Tests marked ``handdata`` skip themselves when the photos are absent, even without the fixture."""
    if handdata_available():
        return
    skip = pytest.mark.skip(reason=f"real hand photos not present at {HANDDATA}")
    for item in items:
        if "handdata" in item.keywords:
            item.add_marker(skip)
