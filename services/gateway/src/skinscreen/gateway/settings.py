"""The gateway's settings, read from the environment (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from skinscreen.runtime.settings import SharedSettings


class Settings(SharedSettings):
    """The gateway's own knobs, on top of those it shares with the inference worker."""

    MAX_UPLOAD_BYTES: int = Field(15 * 1024 * 1024, gt=0, description="Largest image file.")
    MAX_IMAGE_PIXELS: int = Field(
        50_000_000, gt=0, description="Largest width x height; refuses decompression bombs."
    )
    MAX_WAIT_S: float = Field(30.0, gt=0, le=30, description="Upper bound of ?wait=N.")
    DB_POOL_SIZE: int = Field(10, gt=0)


@lru_cache
def get_settings() -> Settings:
    return Settings()
