"""The inference worker's retry delays: exponential, capped, and spread by full jitter."""

from __future__ import annotations

import pytest

from skinscreen.inference.retries import backoff_s

DRAWS = 2000


@pytest.mark.parametrize("retries", [0, 1, 2, 3])
def test_delays_spread_over_the_whole_exponential_window(retries: int) -> None:
    cap = 1.0 * 2**retries
    delays = [backoff_s(retries, 1.0, 60.0) for _ in range(DRAWS)]
    assert all(0.0 <= delay <= cap for delay in delays)
    # Spread, not one instant: tasks failed by the same blip do not come back together.
    # (Each bound fails by chance with probability 0.9**2000, about 1e-92.)
    assert len(set(delays)) > DRAWS // 4
    assert min(delays) < 0.1 * cap
    assert max(delays) > 0.9 * cap


def test_delays_never_exceed_the_maximum() -> None:
    delays = [backoff_s(retries, 1.0, 60.0) for retries in range(6, 20) for _ in range(200)]
    assert all(0.0 <= delay <= 60.0 for delay in delays)
    assert max(delays) > 0.9 * 60.0


def test_fractions_of_a_second_are_kept() -> None:
    # The tests' workers retry after 0.2 s: Celery's whole units are milliseconds here.
    delays = {backoff_s(0, 0.2, 60.0) for _ in range(DRAWS)}
    assert all(0.0 <= delay <= 0.2 for delay in delays)
    assert len(delays) > 50
