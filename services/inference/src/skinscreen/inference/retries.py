"""How long a screening task waits before its next try, after a transient error."""

from __future__ import annotations

from celery.utils.time import get_exponential_backoff_interval


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
