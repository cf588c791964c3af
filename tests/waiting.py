"""Waiting on a condition itself, never on the clock.

Tests run on a shared, busy machine: how long something takes proves nothing,
so no test asserts a duration and none sleeps to let something happen. A test
that must wait polls the condition it needs with `wait_until`; the bound is
generous and says only when to give up, naming what never happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Long enough for a slow, shared 2-core machine; a condition that holds returns at once.
DEFAULT_TIMEOUT_S = 120.0


def wait_until(
    condition: Callable[[], T],
    what: str | Callable[[], str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = 0.1,
) -> T:
    """Poll `condition` until it returns something true, and return that.

    Raises TimeoutError naming `what` (a string, or a callable giving one, e.g. the
    state seen last) if it is still false after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise TimeoutError(f"still not the case after {timeout_s:g} s: {said}")
        time.sleep(interval_s)
