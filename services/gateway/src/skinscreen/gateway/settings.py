"""The gateway's settings, read from the environment (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, field_validator

from skinscreen.runtime.settings import SharedSettings

MIN_OPERATOR_TOKEN_LENGTH = 16


class Settings(SharedSettings):
    """The gateway's own knobs, on top of those it shares with the inference worker."""

    MAX_UPLOAD_BYTES: int = Field(15 * 1024 * 1024, gt=0, description="Largest image file.")
    MAX_IMAGE_PIXELS: int = Field(
        50_000_000, gt=0, description="Largest width x height; refuses decompression bombs."
    )
    MAX_WAIT_S: float = Field(30.0, gt=0, le=30, description="Upper bound of ?wait=N.")
    DB_POOL_SIZE: int = Field(10, gt=0)
    OPERATOR_TOKEN: SecretStr | None = Field(
        None,
        description="Bearer token for promote, rollback, training runs and diagnoses; unset: "
        "those endpoints are open (logged at start). At least 16 characters.",
    )

    @field_validator("OPERATOR_TOKEN")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_OPERATOR_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_OPERATOR_TOKEN_LENGTH} characters (a short token is "
                "guessed); e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return token


@lru_cache
def get_settings() -> Settings:
    return Settings()
