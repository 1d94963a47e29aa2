"""Shared test fixtures: where Detectron's golden outputs live."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GNCONVERT_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"Detectron golden outputs not found at {GOLDEN}; set GNCONVERT_SHARED")
    return GOLDEN
