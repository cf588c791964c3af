"""MAX_BATCH_SIZE and MAX_WAIT_MS follow the provider when unset, and a batch takes the
screenings already waiting even when it waits for none."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from skinscreen.inference import batching, model
from skinscreen.inference.settings import BATCHING_BY_PROVIDER, Settings

SERVERS = {"DATABASE_URL": "postgresql://localhost/x", "REDIS_URL": "redis://localhost/0"}


@pytest.mark.parametrize(
    ("available", "size", "wait_ms"),
    [
        (["CPUExecutionProvider"], 4, 0.0),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], 32, 10.0),
    ],
)
def test_batching_defaults_follow_the_provider(
    monkeypatch: pytest.MonkeyPatch, available: list[str], size: int, wait_ms: float
) -> None:
    monkeypatch.setattr(model.ort, "get_available_providers", lambda: available)
    for key in ("MAX_BATCH_SIZE", "MAX_WAIT_MS", "CONCURRENCY"):
        monkeypatch.delenv(key, raising=False)
    settings = Settings(**SERVERS)  # type: ignore[arg-type]
    assert (settings.MAX_BATCH_SIZE, settings.MAX_WAIT_MS) == (size, wait_ms)
    assert BATCHING_BY_PROVIDER[available[0]].max_batch_size == size
    assert settings.CONCURRENCY == max(2 * size, 32)
    # Set, they are what they say, whatever the provider.
    monkeypatch.setenv("MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("MAX_WAIT_MS", "3")
    assert (Settings(**SERVERS).MAX_BATCH_SIZE, Settings(**SERVERS).MAX_WAIT_MS) == (7, 3.0)  # type: ignore[arg-type]


def test_waiting_screenings_join_a_batch_without_a_wait() -> None:
    async def collect() -> list[list[Any]]:
        batcher: Any = batching.Batcher.__new__(batching.Batcher)
        batcher.max_batch_size, batcher.max_wait_s = 4, 0.0
        batcher._queue = asyncio.Queue()
        for item in range(6):
            batcher._queue.put_nowait(item)
        return [await batcher._collect(), await batcher._collect()]

    assert asyncio.run(collect()) == [[0, 1, 2, 3], [4, 5]]
