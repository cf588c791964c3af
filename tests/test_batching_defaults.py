"""MAX_BATCH_SIZE, MAX_WAIT_MS and LANES follow the provider when unset, ONNX Runtime's
threads share the cores given between the lanes, a batch takes the screenings already
waiting even when it waits for none, and up to LANES batches are in flight at once."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from skinscreen.inference import batching, model, settings
from skinscreen.inference.settings import BATCHING_BY_PROVIDER, CUDA_LANES, Settings

SERVERS = {"DATABASE_URL": "postgresql://localhost/x", "REDIS_URL": "redis://localhost/0"}


@pytest.mark.parametrize(
    ("available", "size", "wait_ms", "lanes"),
    [
        (["CPUExecutionProvider"], 1, 0.0, 3),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], 32, 10.0, CUDA_LANES),
    ],
)
def test_batching_defaults_follow_the_provider(
    monkeypatch: pytest.MonkeyPatch, available: list[str], size: int, wait_ms: float, lanes: int
) -> None:
    monkeypatch.setattr(model.ort, "get_available_providers", lambda: available)
    # A CPU worker runs one call per core it is given: three here.
    monkeypatch.setattr(settings, "available_cores", lambda: 3)
    for key in ("MAX_BATCH_SIZE", "MAX_WAIT_MS", "CONCURRENCY", "LANES", "INTRA_OP_THREADS"):
        monkeypatch.delenv(key, raising=False)
    chosen = Settings(**SERVERS)  # type: ignore[arg-type]
    assert (chosen.MAX_BATCH_SIZE, chosen.MAX_WAIT_MS) == (size, wait_ms)
    assert BATCHING_BY_PROVIDER[available[0]].max_batch_size == size
    assert chosen.LANES == lanes
    assert chosen.CONCURRENCY == max(2 * size * lanes, 32)
    # The cores are shared between the lanes, one thread at least each.
    assert chosen.intra_op_threads == max(1, 3 // lanes)
    # Set, they are what they say, whatever the provider.
    monkeypatch.setenv("MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("MAX_WAIT_MS", "3")
    monkeypatch.setenv("LANES", "1")
    monkeypatch.setenv("INTRA_OP_THREADS", "5")
    chosen = Settings(**SERVERS)  # type: ignore[arg-type]
    assert (chosen.MAX_BATCH_SIZE, chosen.MAX_WAIT_MS, chosen.LANES) == (7, 3.0, 1)
    assert chosen.intra_op_threads == 5


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", "all"),  # no limit: the cores it may run on
        ("150000 100000\n", 2),  # 1.5 CPUs: two threads, rounded up
        ("50000 100000\n", 1),
        (None, "all"),  # no cgroup v2 file
    ],
)
def test_the_cores_given_are_the_affinity_capped_by_the_cgroup_quota(
    tmp_path: Path, cpu_max: str | None, expected: int | str
) -> None:
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    allowed = len(os.sched_getaffinity(0))
    want = allowed if expected == "all" else min(allowed, int(expected))
    assert settings.available_cores(path) == want


def test_waiting_screenings_join_a_batch_without_a_wait() -> None:
    async def collect() -> list[list[Any]]:
        batcher: Any = batching.Batcher.__new__(batching.Batcher)
        batcher.max_batch_size, batcher.max_wait_s = 4, 0.0
        batcher._queue = asyncio.Queue()
        for item in range(6):
            batcher._queue.put_nowait(item)
        return [await batcher._collect(), await batcher._collect()]

    assert asyncio.run(collect()) == [[0, 1, 2, 3], [4, 5]]


def test_up_to_lanes_batches_are_in_flight_at_once() -> None:
    """A batch is collected only when a lane is free: two lanes hold two batches while a
    third waits for one of them to be written, then takes everything queued meanwhile."""

    async def run() -> tuple[list[list[int]], list[list[int]]]:
        batcher: Any = batching.Batcher.__new__(batching.Batcher)
        batcher.max_batch_size, batcher.max_wait_s, batcher.lanes = 1, 0.0, 2
        batcher._queue = asyncio.Queue()
        batcher._in_flight = set()
        batcher.peak_in_flight = 0
        started: list[list[int]] = []
        release = asyncio.Event()

        async def process(batch: list[int]) -> None:
            started.append(batch)
            await release.wait()

        batcher._process = process
        for item in range(4):
            batcher._queue.put_nowait(item)
        runner = asyncio.create_task(batcher._run())
        while len(started) < 2:
            await asyncio.sleep(0)
        for _ in range(20):  # give a third batch every chance to start
            await asyncio.sleep(0)
        while_busy = [list(batch) for batch in started]
        release.set()
        while len(started) < 4:
            await asyncio.sleep(0)
        runner.cancel()
        assert batcher.peak_in_flight == 2
        return while_busy, started

    while_busy, started = asyncio.run(run())
    assert while_busy == [[0], [1]]
    assert started == [[0], [1], [2], [3]]
