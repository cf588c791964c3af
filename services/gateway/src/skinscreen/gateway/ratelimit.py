"""Rate limits per API key, counted in Redis by `limits` (the library behind slowapi).

Two budgets per key: `screenings` (POST /v1/screenings) and `reads` (every other /v1
operation: reads, lists, ?wait long polls, diagnoses, management). Each is a moving window
(`limits`' MovingWindowRateLimiter: at most N requests in any window of the period, no burst at
a window's edge). The limits are the key's clinic's (clinics.rate_limit_screenings,
rate_limit_reads, set by operators) or the gateway's defaults (RATE_LIMIT_SCREENINGS,
RATE_LIMIT_READS) for a clinic without its own and for keys of no clinic.

Checked by `auth.authenticate` right after the key and its scope, before the route runs, so a
refused request stores nothing. Every answer to a limited operation carries `RateLimit-Limit`,
`RateLimit-Remaining` and `RateLimit-Reset` (seconds until a request is free again); a
refusal is 429 with `Retry-After` too.

Redis down or slow (REDIS_TIMEOUT_S): the limit fails open. The request is served unlimited,
without the RateLimit headers, and a warning is logged at most every LOG_EVERY_S: reads need
only PostgreSQL and keep working; a screening is refused 503 by the queue on the same Redis
anyway.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import limits
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from .schemas import Problem

logger = logging.getLogger(__name__)

KEY_PREFIX: Final = "skinscreen-ratelimit"
LOG_EVERY_S: Final = 10.0


class Budget(StrEnum):
    SCREENINGS = "screenings"
    READS = "reads"


def budget_of(method: str, path: str) -> Budget:
    """POST /v1/screenings spends the screenings budget; everything else the reads budget."""
    return Budget.SCREENINGS if method == "POST" and path == "/v1/screenings" else Budget.READS


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    @property
    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_s)
        return headers


class RateLimiter:
    """The gateway's limiter: one Redis connection pool for every key's windows."""

    def __init__(self, redis_url: str, timeout_s: float) -> None:
        self.storage = RedisStorage(
            f"async+{redis_url}",
            wrap_exceptions=True,
            implementation="redispy",
            key_prefix=KEY_PREFIX,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self.limiter = MovingWindowRateLimiter(self.storage)
        self._warned_at = -math.inf

    async def hit(self, budget: Budget, key_id: str, limit: str) -> Decision | None:
        """Spend one request of `key_id`'s `budget`; None when Redis did not answer (fail
        open)."""
        item = limits.parse(limit)
        try:
            allowed = await self.limiter.hit(item, budget.value, key_id)
            stats = await self.limiter.get_window_stats(item, budget.value, key_id)
        except (StorageError, OSError, TimeoutError) as exc:
            now = time.monotonic()
            if now - self._warned_at >= LOG_EVERY_S:
                self._warned_at = now
                logger.warning("rate limits not checked, Redis did not answer: %s", exc)
            return None
        reset_s = max(1, math.ceil(stats.reset_time - time.time()))
        return Decision(allowed, item.amount, max(0, stats.remaining), reset_s)


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": {"type": "integer"}}


TOO_MANY_REQUESTS: Final[dict[str, Any]] = {
    "model": Problem,
    "description": "Over this key's rate limit (its clinic's, or the service's default; "
    "screenings and other requests have separate budgets); nothing was done.",
    "headers": {
        "Retry-After": _header("Seconds until a request is admitted again."),
        "RateLimit-Limit": _header("Requests allowed in the window."),
        "RateLimit-Remaining": _header("Requests left in the window (0)."),
        "RateLimit-Reset": _header("Seconds until a request is admitted again."),
    },
}
