"""Load and failure on the real stack: 200 concurrent screenings, and a worker killed mid-batch."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from redis import Redis

from tests.serving.conftest import Keys
from tests.waiting import wait_until

N_CONCURRENT = 200
LONG_POLLS = 6

pytestmark = pytest.mark.data  # real PAD-UFES-20 photos; skipped when absent


async def _submit_all(keys: Keys, gateway: str, photos) -> list[str]:
    limits = httpx.Limits(max_connections=N_CONCURRENT)
    async with httpx.AsyncClient(
        base_url=gateway, headers=keys.clinician, timeout=120, limits=limits
    ) as client:

        async def one(photo) -> str:
            response = await client.post(
                "/v1/screenings",
                files={"image": (photo.path.name, photo.path.read_bytes(), "image/jpeg")},
                data={"clinical": photo.clinical.model_dump_json()},
            )
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        return list(await asyncio.gather(*(one(photo) for photo in photos)))


async def _wait_all(keys: Keys, gateway: str, ids: list[str]) -> list[dict]:
    limits = httpx.Limits(max_connections=N_CONCURRENT)
    async with httpx.AsyncClient(
        base_url=gateway, headers=keys.clinician, timeout=120, limits=limits
    ) as client:

        async def one(screening_id: str) -> dict:
            # Long polls of 30 s each, a generous number of them: each returns as soon as
            # the screening finishes.
            for _ in range(LONG_POLLS):
                body = (await client.get(f"/v1/screenings/{screening_id}?wait=30")).json()
                if body["status"] in ("done", "failed"):
                    break
            return dict(body)

        return list(await asyncio.gather(*(one(screening_id) for screening_id in ids)))


def test_200_concurrent_screenings_complete_in_real_batches(
    gateway: str, photos, database, keys: Keys
) -> None:
    chosen = (photos * (N_CONCURRENT // len(photos) + 1))[:N_CONCURRENT]
    ids = asyncio.run(_submit_all(keys, gateway, chosen))
    assert len(set(ids)) == N_CONCURRENT
    results = asyncio.run(_wait_all(keys, gateway, ids))
    assert [result["status"] for result in results] == ["done"] * N_CONCURRENT
    sizes = [
        row["size"]
        for row in database.fetch(
            "SELECT DISTINCT b.id, b.size FROM inference_batches b"
            " JOIN screenings s ON s.batch_id = b.id WHERE s.id = ANY($1::uuid[])",
            ids,
        )
    ]
    assert max(sizes) > 1, sizes
    assert sum(sizes) >= N_CONCURRENT


def test_a_killed_worker_loses_nothing_and_writes_each_result_once(
    gateway: str, photos, database, worker, restart_worker, stack_env, request, keys: Keys
) -> None:
    broker = Redis.from_url(stack_env["REDIS_URL"])
    request.addfinalizer(broker.close)
    # Screenings other tests sent and did not wait for are scored first, so every batch
    # from here on holds this test's screenings alone.
    wait_until(
        lambda: (
            not database.value(
                "SELECT count(*) FROM screenings WHERE status IN ('queued', 'running')"
                " AND model_name = 'skinscreen-fusion'"
            )
        ),
        "the worker has finished what other tests queued",
    )
    first_batch = database.value("SELECT coalesce(max(id), 0) FROM inference_batches")
    ids = asyncio.run(_submit_all(keys, gateway, photos[:64]))
    # Kill the worker once it has finished some screenings and is in the middle of a batch
    # (rows claimed as running, their messages unacknowledged in Redis).
    counts: dict[str, int] = {}

    def mid_batch() -> bool:
        held = broker.hlen("unacked")
        counts.clear()
        counts.update(
            (row["status"], row["count"])
            for row in database.fetch(
                "SELECT status, count(*) FROM screenings WHERE id = ANY($1::uuid[])"
                " GROUP BY status",
                ids,
            )
        )
        return held > 0 and counts.get("done", 0) > 0 and counts.get("running", 0) > 0

    wait_until(mid_batch, "the worker holds tasks mid-batch, after finishing some", 60, 0.02)
    worker.kill()
    done = counts.get("done", 0)
    assert done < len(ids), "the worker finished everything before it could be killed"
    assert broker.hlen("unacked") > 0

    restart_worker(worker)
    results = asyncio.run(_wait_all(keys, gateway, ids))
    assert [result["status"] for result in results] == ["done"] * len(ids)
    written = database.value(
        "SELECT coalesce(sum(written), 0) FROM inference_batches WHERE id > $1", first_batch
    )
    assert written == len(ids), "a result was written twice, or one is missing"
    redelivered = database.value(
        "SELECT count(*) FROM screenings WHERE id = ANY($1::uuid[]) AND attempts > 1", ids
    )
    assert redelivered > 0, "no task was redelivered after the kill"
