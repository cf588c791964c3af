"""The trainer worker's settings, read from the environment (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field

from skinscreen.runtime.settings import SharedSettings


class Settings(SharedSettings):
    """The trainer's own knobs, on top of the servers, stores and data it shares."""

    RUNS_DIR: Path = Field(Path("runs"), description="Run folders: config, report, plots.")
    PROMOTION_TOLERANCE: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="A candidate becomes active only if neither its cross-validated recall nor "
        "its balanced accuracy is below the active version's by more than this.",
    )
    HEARTBEAT_S: float = Field(10.0, gt=0, description="How often a running run says it lives.")
    STALE_RUN_S: float = Field(
        300.0,
        gt=0,
        description="A running run without a heartbeat for this long is marked failed when a "
        "trainer worker starts: the worker that ran it died.",
    )
    LOG_LEVEL: str = "INFO"


@lru_cache
def get_settings() -> Settings:
    return Settings()
