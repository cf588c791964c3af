"""Which errors a screening task tries again after, and how long it waits first."""

from __future__ import annotations

import asyncpg
from celery.utils.time import get_exponential_backoff_interval

# Worth another try: the database, the blob store or the runtime may be back soon.
# asyncpg's InternalClientError is a connection left mid-operation by a server that went away;
# the reader that raised it drops that connection (inputs.InputReader).
TRANSIENT_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    RuntimeError,
)


def backoff_s(retries: int, first_s: float, maximum_s: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(maximum_s, first_s * 2**retries)].

    The jitter spreads the retries of the tasks that one database blip failed together,
    so they do not all come back at once. Celery's helper works in whole units, so it
    is given milliseconds (the tests retry after fractions of a second).
    """
    return (
        get_exponential_backoff_interval(
            factor=round(first_s * 1000),
            retries=retries,
            maximum=round(maximum_s * 1000),
            full_jitter=True,
        )
        / 1000.0
    )
