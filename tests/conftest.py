"""Shared fixtures: where the real data lives, and skipping cleanly when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PAD_UFES = SHARED_DATA / "pad-ufes-20"


@pytest.fixture(scope="session")
def pad_ufes_dir() -> Path:
    if not (PAD_UFES / "metadata.csv").is_file():
        pytest.skip(f"real PAD-UFES-20 data not found at {PAD_UFES}")
    return PAD_UFES
