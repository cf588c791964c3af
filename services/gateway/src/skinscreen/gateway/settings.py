"""The gateway's settings, read from the environment (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from skinscreen.runtime.accounts import RATE_LIMIT_PATTERN
from skinscreen.runtime.settings import SharedSettings


class Settings(SharedSettings):
    """The gateway's own knobs, on top of those it shares with the inference worker."""

    MAX_UPLOAD_BYTES: int = Field(15 * 1024 * 1024, gt=0, description="Largest image file.")
    # Every accepted photo is decoded in full by an inference worker: DECODE_BYTES_PER_PIXEL
    # (9) x pixels at its peak. 50 megapixels (the largest phone photos: 8160 x 6120) cost
    # 450 MB, so the worker's default budget (1024 MB) decodes two of them at once
    # (9 B x 50 MP <= 1024 MB / 2), under its 4 GiB pod limit with the model beside them. The
    # gateway itself holds 1/64 of that for a JPEG and nothing for a PNG (images.py).
    MAX_IMAGE_PIXELS: int = Field(
        50_000_000, gt=0, description="Largest width x height; refuses decompression bombs."
    )
    # The smallest served model takes 150 x 150 (skinscreen-fusion 224 x 224); a shorter side
    # under half of 224 would be enlarged more than twice, showing the model interpolation
    # rather than the lesion. Phones send 480 px and more; PAD-UFES-20's smallest is 147 px.
    MIN_IMAGE_SIDE: int = Field(
        112, gt=0, description="Smallest shorter side of a photo, in pixels."
    )
    # Two uvicorn workers per pod (deploy/k8s) each take ~110 MB before any photo: 2 x (110 +
    # 192) stays well under the pod's 768 MiB.
    DECODE_MEMORY_BUDGET_MB: int = Field(
        192, gt=0, description="Memory one gateway process spends decoding photos at once."
    )
    DECODE_WAIT_S: float = Field(
        10.0, gt=0, description="Longest an upload waits for decode memory before 503."
    )
    MAX_WAIT_S: float = Field(30.0, gt=0, le=30, description="Upper bound of ?wait=N.")
    DB_POOL_SIZE: int = Field(10, gt=0)
    # Per API key, counted in Redis (ratelimit.py); a clinic may have its own (PATCH
    # /v1/clinics/{id}). A refused request gets 429 with Retry-After.
    RATE_LIMIT_SCREENINGS: str = Field(
        "60/minute",
        pattern=RATE_LIMIT_PATTERN,
        description="Screenings one key may post: '<requests>/<second|minute|hour|day>'.",
    )
    RATE_LIMIT_READS: str = Field(
        "600/minute",
        pattern=RATE_LIMIT_PATTERN,
        description="Other requests one key may make (reads, lists, waits, diagnoses, "
        "management): '<requests>/<second|minute|hour|day>'.",
    )
    CORS_ALLOW_ORIGINS: str = Field(
        "",
        description="Comma-separated origins (e.g. https://app.example.org) whose web pages may "
        "call the API; empty: no CORS header is ever sent, so no other origin's page reads it.",
    )
    HSTS_MAX_AGE_S: int = Field(
        0,
        ge=0,
        description="Strict-Transport-Security max-age on every answer; 0: not sent. Set only "
        "when the gateway is reached over HTTPS alone (e.g. 31536000 behind a TLS ingress).",
    )
    # Fail fast: a request never waits long on a server that is down; it is answered 503 with
    # Retry-After (main.py), and /readyz takes the pod out of the Service meanwhile.
    DB_CONNECT_TIMEOUT_S: float = Field(
        1.0, gt=0, description="Longest wait for a new PostgreSQL connection."
    )
    # A server that is down fails a connect within DB_CONNECT_TIMEOUT_S, whatever this says;
    # this bounds the wait for a free connection while all are busy: a burst (200 uploads at
    # once on a loaded 2-core machine waited past 2 s) is queued, not answered "unavailable".
    DB_ACQUIRE_TIMEOUT_S: float = Field(
        10.0,
        gt=0,
        description="Longest wait for a pooled PostgreSQL connection, connecting included.",
    )
    DB_COMMAND_TIMEOUT_S: float = Field(
        10.0, gt=0, description="Longest any one PostgreSQL statement may take."
    )
    REDIS_TIMEOUT_S: float = Field(
        1.0,
        gt=0,
        description="Longest wait to connect to Redis, and for any one command, for /readyz "
        "and the queue metrics (publishing has its own bounds, skinscreen.runtime.queue).",
    )
    RETRY_AFTER_S: int = Field(
        5, gt=0, description="Retry-After of a 503 answered while PostgreSQL or Redis is down."
    )
    LISTEN_RECONNECT_MAX_S: float = Field(
        5.0,
        gt=0,
        description="Longest pause between attempts to re-open the LISTEN connection that "
        "wakes ?wait long polls (the pauses double from 0.1 s up to this).",
    )
    LISTEN_CHECK_S: float = Field(
        5.0,
        gt=0,
        description="How often the LISTEN connection is checked (a connection the network "
        "dropped without closing it is found this way and re-opened).",
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
