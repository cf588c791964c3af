"""How a worker learns of a new active version: the announcement, the poll, and a batch.

Each of the three ways a worker can come to serve a new version is tested with
the other two out of the way, so removing any one of them fails its test:

- the Redis announcement alone (polling effectively off, no screening scored);
- re-reading the registry alone (no announcement sent, no screening scored);
- a batch whose version was retired before its result was written: scored again
  by the new active version (no announcement, no polling).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from skinscreen.runtime import registry
from skinscreen.runtime.commands import WORKER_COMMAND
from tests.serving.conftest import (
    MODEL_NAME,
    Lifecycle,
    Photo,
    Process,
    served_version,
    start_worker,
    submit,
    wait_until_served,
)
from tests.serving.variants import direct_probabilities, publish_variant, run

pytestmark = [pytest.mark.data, pytest.mark.timeout(300)]


def promote_unannounced(lifecycle: Lifecycle, version: str) -> None:
    """Switch the registry's active version and tell no worker: a lost announcement."""
    run(
        lifecycle,
        lambda pool: registry.promote(pool, MODEL_NAME, version, actor="test", reason="quiet"),
    )


def active_version(lifecycle: Lifecycle) -> str:
    active = run(lifecycle, lambda pool: registry.get_active(pool, MODEL_NAME))
    assert active is not None
    return str(active.version)


@pytest.fixture
def polling_worker(lifecycle: Lifecycle, tmp_path: Path) -> Iterator[Process]:
    """A second worker on the module's stack that re-reads the registry every second."""
    worker = Process(WORKER_COMMAND, {**lifecycle.env, "MODEL_POLL_S": "1"}, tmp_path / "w.log")
    try:
        start_worker(worker)
        yield worker
    finally:
        worker.stop()


def test_the_announcement_alone_switches_a_worker(
    lifecycle: Lifecycle, photos: list[Photo], tmp_path: Path
) -> None:
    """The module's worker does not poll (MODEL_POLL_S is a day) and scores nothing here:
    only the gateway's announcement on Redis can make it load the promoted version."""
    assert int(float(lifecycle.worker.env["MODEL_POLL_S"])) >= 86400
    publish_variant(lifecycle, "29990401.000001", shift=1.0, tmp=tmp_path)
    assert served_version(lifecycle.worker) != "29990401.000001"
    promoted = httpx.post(
        f"{lifecycle.url}/v1/models/{MODEL_NAME}/versions/29990401.000001/promote",
        json={"reason": "announced", "requested_by": "test"},
        headers=lifecycle.keys.operator,
    )
    assert promoted.status_code == 200, promoted.text
    wait_until_served(lifecycle.worker, "29990401.000001")
    # And it scores with it.
    with httpx.Client(
        base_url=lifecycle.url, headers=lifecycle.keys.clinician, timeout=60
    ) as client:
        accepted = submit(client, photos[0])
        result = client.get(accepted.headers["Location"], params={"wait": 30}).json()
    assert result["status"] == "done", result
    assert result["result"]["model_version"] == "29990401.000001"
    (expected,) = direct_probabilities(lifecycle, "29990401.000001", photos[:1])
    assert abs(result["result"]["cancer_probability"] - float(expected)) <= 1e-5


def test_polling_alone_recovers_a_missed_announcement(
    lifecycle: Lifecycle, polling_worker: Process, tmp_path: Path
) -> None:
    publish_variant(lifecycle, "29990402.000001", shift=-0.5, tmp=tmp_path)
    before = served_version(lifecycle.worker)
    assert served_version(polling_worker) == active_version(lifecycle)
    promote_unannounced(lifecycle, "29990402.000001")
    # The worker that polls finds it by itself...
    wait_until_served(polling_worker, "29990402.000001")
    # ... while the one that relies on announcements never heard of it: it was missed.
    assert served_version(lifecycle.worker) == before


def test_a_batch_scored_by_a_retired_version_is_scored_again(
    lifecycle: Lifecycle, photos: list[Photo], tmp_path: Path
) -> None:
    """Promoted behind the worker's back: its first batch is scored by the version it holds,
    which is retired by then, so nothing is written; it loads the active one and scores the
    batch again. Every result carries the active version and that version's probability."""
    publish_variant(lifecycle, "29990403.000001", shift=0.75, tmp=tmp_path)
    old = served_version(lifecycle.worker)
    assert old is not None
    promote_unannounced(lifecycle, "29990403.000001")
    assert served_version(lifecycle.worker) == old, "the worker was told; nothing to test"
    chosen = photos[:3]
    with httpx.Client(
        base_url=lifecycle.url, headers=lifecycle.keys.clinician, timeout=60
    ) as client:
        accepted = [submit(client, photo) for photo in chosen]
        results = [
            client.get(response.headers["Location"], params={"wait": 30}).json()
            for response in accepted
        ]
    assert [result["status"] for result in results] == ["done"] * len(chosen), results
    assert {result["result"]["model_version"] for result in results} == {"29990403.000001"}
    expected = direct_probabilities(lifecycle, "29990403.000001", chosen)
    np.testing.assert_allclose(
        [result["result"]["cancer_probability"] for result in results], expected, atol=1e-5
    )
    assert served_version(lifecycle.worker) == "29990403.000001"
    log = lifecycle.worker.log.read_text()
    assert "the version that scored it was retired; scoring it again with 29990403.000001" in log
    # Nothing was recorded under the retired version for these screenings.
    batches = lifecycle.database.fetch(
        "SELECT DISTINCT b.model_version FROM screenings s JOIN inference_batches b"
        " ON b.id = s.batch_id WHERE s.id = ANY($1::uuid[])",
        [response.json()["id"] for response in accepted],
    )
    assert [row["model_version"] for row in batches] == ["29990403.000001"]
