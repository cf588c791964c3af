"""Moved: the worker's statements on `screenings` live in `skinscreen.runtime.screenings`.

Kept only so modules not yet moved over keep importing; it holds no SQL. Import
`skinscreen.runtime.screenings` instead.
"""

from __future__ import annotations

from skinscreen.runtime.screenings import (
    CLAIM,
    FAIL,
    RECORD_BATCH,
    BatchRecord,
    claim,
    fail,
    record_batch,
)

__all__ = ["CLAIM", "FAIL", "RECORD_BATCH", "BatchRecord", "claim", "fail", "record_batch"]
