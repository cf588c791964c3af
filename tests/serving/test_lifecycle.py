"""Model lifecycle on real servers: registry, promotion checks, hot swap, rollback, the CLI.

The other versions are real models (tests/serving/variants.py): the shipped
ONNX with its classifier's cancer biases shifted, so their probabilities differ
and a result tagged with the wrong version would not match a direct run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest
from redis import Redis

from skinscreen.core.card import MODEL_FILE, read_card
from skinscreen.runtime import registry
from skinscreen.runtime.accounts import key_sha256
from tests.serving.conftest import MODEL_NAME, Lifecycle, Photo, submit
from tests.serving.variants import direct_probabilities, publish_variant, run
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(300)


class Traffic:
    """Clients posting real photos without pause until stopped; remembers what they sent.

    Whatever goes wrong in a client thread (a refused upload, a failed read, a transport
    error) is kept in `errors`, never lost with the thread.
    """

    def __init__(
        self, url: str, photos: list[Photo], headers: dict[str, str], clients: int = 3
    ) -> None:
        self.url = url
        # The API key it sends.
        self.headers = headers
        self.photos = photos
        self.sent: dict[str, Photo] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(index,)) for index in range(clients)
        ]

    def _client(self, index: int) -> None:
        try:
            with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as client:
                sent = index
                while not self._stop.is_set():
                    photo = self.photos[sent % len(self.photos)]
                    response = submit(client, photo)
                    if response.status_code != 202:
                        self.errors.append(f"POST {response.status_code}: {response.text}")
                        continue
                    self.sent[response.json()["id"]] = photo
                    read = client.get(response.headers["Location"], params={"wait": 30})
                    if read.status_code != 200 or read.json()["status"] == "failed":
                        self.errors.append(f"GET {read.status_code}: {read.text}")
                    sent += 3
        except BaseException as exc:  # kept for the test to report, not lost with the thread
            self.errors.append(f"client {index}: {exc!r}")

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def scored_by(lifecycle: Lifecycle, version: str, after: datetime) -> int:
    """Screenings finished after `after` that carry `version`."""
    return int(
        lifecycle.database.value(
            "SELECT count(*) FROM screenings WHERE model_version = $1 AND completed_at > $2",
            version,
            after,
        )
    )


def wait_for_version(lifecycle: Lifecycle, version: str, after: datetime, count: int = 1) -> None:
    """Until `count` screenings finished after `after` carry `version` (the worker switched)."""
    wait_until(
        lambda: scored_by(lifecycle, version, after) >= count,
        f"{count} screenings scored by {version}",
    )


def database_now(lifecycle: Lifecycle) -> datetime:
    """The database's clock, the one that stamps completed_at."""
    now: datetime = lifecycle.database.value("SELECT clock_timestamp()")
    return now


def switch(
    lifecycle: Lifecycle, path: str, reason: str, request_id: str | None = None
) -> httpx.Response:
    headers = lifecycle.keys.operator
    if request_id is not None:
        headers = {**headers, "X-Request-ID": request_id}
    return httpx.post(
        f"{lifecycle.url}{path}", json={"reason": reason, "requested_by": "test"}, headers=headers
    )


@pytest.mark.data
def test_hot_swap_and_rollback_under_traffic(
    lifecycle: Lifecycle, photos: list[Photo], tmp_path: Path
) -> None:
    """Promote, then roll back, while screenings flow: none fails, each carries the version
    active when its result was written, and its probability is that version's. The worker
    learns of each switch from its announcement alone (the stack's workers do not poll)."""
    # The version active now, whichever test of the module ran before.
    serving = run(lifecycle, lambda pool: registry.get_active(pool, MODEL_NAME)).version
    publish_variant(lifecycle, "29990101.000001", shift=1.5, tmp=tmp_path)
    sample = photos[:60]
    with Traffic(lifecycle.url, sample, lifecycle.keys.clinician) as traffic:
        # Screenings flow before the switch...
        wait_for_version(lifecycle, serving, database_now(lifecycle), count=3)
        started = database_now(lifecycle)
        promoted = switch(
            lifecycle, f"/v1/models/{MODEL_NAME}/versions/29990101.000001/promote", "test"
        )
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["status"] == "active"
        # ... go on through it, and after it under the new version...
        wait_for_version(lifecycle, "29990101.000001", started, count=3)
        back = database_now(lifecycle)
        rolled = switch(lifecycle, f"/v1/models/{MODEL_NAME}/rollback", "test rollback")
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["version"] == serving
        # ... and through the rollback.
        wait_for_version(lifecycle, serving, back, count=3)
    assert not traffic.errors

    ids = list(traffic.sent)
    wait_until(
        lambda: (
            not lifecycle.database.value(
                "SELECT count(*) FROM screenings WHERE id = ANY($1::uuid[]) AND status IN"
                " ('queued', 'running')",
                ids,
            )
        ),
        "every screening sent finished",
    )
    rows = lifecycle.database.fetch(
        "SELECT id::text, status, model_version, cancer_probability, completed_at"
        " FROM screenings WHERE id = ANY($1::uuid[])",
        ids,
    )
    assert [row["status"] for row in rows].count("done") == len(rows), "a screening failed"
    versions = {row["model_version"] for row in rows}
    assert versions == {serving, "29990101.000001"}

    history = run(lifecycle, lambda pool: registry.activations(pool, MODEL_NAME))

    def active_at(moment: datetime) -> str:
        return [item.version for item in history if item.activated_at <= moment][-1]

    for row in rows:
        assert row["model_version"] == active_at(row["completed_at"]), row

    for version in versions:
        tagged = [row for row in rows if row["model_version"] == version]
        expected = direct_probabilities(
            lifecycle, version, [traffic.sent[row["id"]] for row in tagged]
        )
        np.testing.assert_allclose(
            [row["cancer_probability"] for row in tagged], expected, atol=1e-5
        )


@pytest.mark.data
def test_a_version_that_fails_to_load_leaves_the_old_one_serving(
    lifecycle: Lifecycle, photos: list[Photo], tmp_path: Path
) -> None:
    serving = run(lifecycle, lambda pool: registry.get_active(pool, MODEL_NAME)).version
    uri = publish_variant(lifecycle, "29990101.000002", shift=-1.0, tmp=tmp_path)
    # Damaged in the store after it was checked: promotion is forced past the check, as if
    # the store went bad between the promotion and the workers' load.
    model_file = Path(uri.removeprefix("file://")) / MODEL_FILE
    model_file.chmod(0o644)
    model_file.write_bytes(model_file.read_bytes()[:1000])

    async def forced(pool: Any) -> registry.ModelVersion:
        async def unchecked(_: registry.ModelVersion) -> None:
            return None

        return await registry.promote(
            pool, MODEL_NAME, "29990101.000002", actor="test", reason="t", verify=unchecked
        )

    announced = run(lifecycle, forced)
    with Redis.from_url(lifecycle.env["REDIS_URL"]) as redis:
        redis.publish(registry.ACTIVATIONS_CHANNEL, registry.activation_message(announced))
    wait_until(
        lambda: (
            "could not load skinscreen-fusion 29990101.000002" in lifecycle.worker.log.read_text()
        ),
        "the failed load is reported in the worker's log",
    )
    with httpx.Client(
        base_url=lifecycle.url, headers=lifecycle.keys.clinician, timeout=60
    ) as client:
        response = submit(client, photos[0])
        body = client.get(response.headers["Location"], params={"wait": 30}).json()
    assert body["status"] == "done"
    assert body["result"]["model_version"] == serving
    # Put things back for the tests that follow.
    run(
        lifecycle,
        lambda pool: registry.promote(pool, MODEL_NAME, serving, actor="test", reason="restore"),
    )


def test_promotion_refuses_unknown_and_damaged_versions(
    lifecycle: Lifecycle, tmp_path: Path
) -> None:
    before = run(lifecycle, lambda pool: registry.get_active(pool, MODEL_NAME)).version
    missing = switch(lifecycle, f"/v1/models/{MODEL_NAME}/versions/20000101.000000/promote", "x")
    assert missing.status_code == 404
    assert "has no version '20000101.000000'" in missing.json()["detail"]

    uri = publish_variant(lifecycle, "29990101.000003", shift=0.5, tmp=tmp_path)
    model_file = Path(uri.removeprefix("file://")) / MODEL_FILE
    model_file.chmod(0o644)
    model_file.write_bytes(b"not the published bytes")
    damaged = switch(lifecycle, f"/v1/models/{MODEL_NAME}/versions/29990101.000003/promote", "x")
    assert damaged.status_code == 409
    assert "sha256" in damaged.json()["detail"]
    assert "active version is unchanged" in damaged.json()["detail"]
    after = run(lifecycle, lambda pool: registry.get_active(pool, MODEL_NAME)).version
    assert after == before

    listed = httpx.get(
        f"{lifecycle.url}/v1/models/{MODEL_NAME}/versions", headers=lifecycle.keys.clinician
    ).json()["items"]
    statuses = {item["version"]: item["status"] for item in listed}
    assert statuses[before] == "active"
    assert list(statuses.values()).count("active") == 1
    assert statuses["29990101.000003"] == "candidate"


def test_promoting_a_version_whose_artifact_is_missing_is_409(
    lifecycle: Lifecycle, tmp_path: Path
) -> None:
    """Registered, but its model.onnx is gone from the store: refused, nothing switches."""
    before = run(lifecycle, lambda pool: registry.get_active(pool, MODEL_NAME)).version
    uri = publish_variant(lifecycle, "29990101.000004", shift=0.5, tmp=tmp_path)
    (Path(uri.removeprefix("file://")) / MODEL_FILE).unlink()
    missing = switch(lifecycle, f"/v1/models/{MODEL_NAME}/versions/29990101.000004/promote", "x")
    assert missing.status_code == 409, missing.text
    detail = missing.json()["detail"]
    assert detail.startswith("not promoted, the active version is unchanged: ")
    assert f"no {MODEL_FILE} at {uri}" in detail
    assert run(lifecycle, lambda pool: registry.get_active(pool, MODEL_NAME)).version == before
    listed = httpx.get(
        f"{lifecycle.url}/v1/models/{MODEL_NAME}/versions/29990101.000004",
        headers=lifecycle.keys.clinician,
    )
    assert listed.json()["status"] == "candidate"


def publish_as(lifecycle: Lifecycle, name: str, version: str) -> None:
    """The shipped model published and registered under another name: a model of the test's
    own, whose registry history no other test touches."""
    source = Path(lifecycle.store.base) / MODEL_NAME / lifecycle.shipped_version
    card = read_card(source).model_copy(update={"name": name, "version": version})
    uri = lifecycle.store.publish(source / MODEL_FILE, card)
    run(lifecycle, lambda pool: registry.register(pool, card, uri))


def test_rollback_with_nothing_to_roll_back_is_409(lifecycle: Lifecycle) -> None:
    name = "skinscreen-rollback-test"
    publish_as(lifecycle, name, "20000101.000001")
    # No active version at all.
    nothing = switch(lifecycle, f"/v1/models/{name}/rollback", "r")
    assert nothing.status_code == 409, nothing.text
    assert nothing.json()["detail"] == f"model {name} has no active version to roll back"
    # The first version ever promoted was not promoted over another: nothing to go back to.
    first = switch(lifecycle, f"/v1/models/{name}/versions/20000101.000001/promote", "first")
    assert first.status_code == 200, first.text
    alone = switch(lifecycle, f"/v1/models/{name}/rollback", "r")
    assert alone.status_code == 409, alone.text
    assert "was not promoted over another version" in alone.json()["detail"]
    active = run(lifecycle, lambda pool: registry.get_active(pool, name))
    assert active.version == "20000101.000001"
    history = httpx.get(
        f"{lifecycle.url}/v1/models/{name}/activations", headers=lifecycle.keys.clinician
    ).json()["items"]
    assert [item["action"] for item in history] == ["promote"]


def test_the_database_allows_one_active_version_per_name(lifecycle: Lifecycle) -> None:
    with pytest.raises(asyncpg.UniqueViolationError):
        run(
            lifecycle,
            lambda pool: pool.execute(
                "UPDATE model_versions SET status = 'active', promoted_by = 'x',"
                " promoted_at = now() WHERE name = $1",
                MODEL_NAME,
            ),
        )


def test_rollback_walks_back_through_promotions(lifecycle: Lifecycle, tmp_path: Path) -> None:
    start = run(lifecycle, lambda pool: registry.get_active(pool, MODEL_NAME)).version
    request_ids: list[str] = []
    for version in ("29990201.000001", "29990201.000002"):
        publish_variant(lifecycle, version, shift=0.25, tmp=tmp_path)
        request_ids.append(f"test-{uuid.uuid4()}")
        path = f"/v1/models/{MODEL_NAME}/versions/{version}/promote"
        response = switch(lifecycle, path, "p", request_ids[-1])
        assert response.status_code == 200, response.text
    request_ids += [f"test-{uuid.uuid4()}", f"test-{uuid.uuid4()}"]
    rollback = f"/v1/models/{MODEL_NAME}/rollback"
    first = switch(lifecycle, rollback, "r1", request_ids[2]).json()
    second = switch(lifecycle, rollback, "r2", request_ids[3]).json()
    assert (first["version"], second["version"]) == ("29990201.000001", start)
    # The audit trail: one event per switch, naming the operator's key and the version.
    events = run(
        lifecycle,
        lambda pool: pool.fetch(
            "SELECT e.request_id, e.action, e.subject FROM audit_events e"
            " JOIN api_keys k ON k.id = e.key_id"
            " WHERE e.request_id = ANY($1::text[]) AND k.key_sha256 = $2 ORDER BY e.id",
            request_ids,
            key_sha256(lifecycle.keys.operator_key),
        ),
    )
    assert [tuple(event) for event in events] == [
        (request_ids[0], "model.promoted", f"{MODEL_NAME}@29990201.000001"),
        (request_ids[1], "model.promoted", f"{MODEL_NAME}@29990201.000002"),
        (request_ids[2], "model.rolled_back", f"{MODEL_NAME}@29990201.000001"),
        (request_ids[3], "model.rolled_back", f"{MODEL_NAME}@{start}"),
    ]
    history = httpx.get(
        f"{lifecycle.url}/v1/models/{MODEL_NAME}/activations", headers=lifecycle.keys.clinician
    ).json()["items"]
    assert [item["action"] for item in history[-4:]] == [
        "promote",
        "promote",
        "rollback",
        "rollback",
    ]
    assert (history[-1]["reason"], history[-1]["actor"]) == ("r2", "test")


def trainer_cli(lifecycle: Lifecycle, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skinscreen.trainer.cli", *args],
        env=lifecycle.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_lists_promotes_and_rolls_back(lifecycle: Lifecycle, tmp_path: Path) -> None:
    publish_variant(lifecycle, "29990301.000001", shift=0.1, tmp=tmp_path)
    before = run(lifecycle, lambda pool: registry.get_active(pool, MODEL_NAME)).version

    listed = trainer_cli(lifecycle, "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    versions = {item["version"]: item["status"] for item in json.loads(listed.stdout)}
    assert versions["29990301.000001"] == "candidate"

    unknown = trainer_cli(lifecycle, "models", "promote", "1.0", "--reason", "x")
    assert unknown.returncode == 2
    assert "has no version '1.0'" in unknown.stderr
    assert run(lifecycle, lambda pool: registry.get_active(pool, MODEL_NAME)).version == before

    promoted = trainer_cli(lifecycle, "models", "promote", "29990301.000001", "--reason", "cli")
    assert promoted.returncode == 0, promoted.stderr
    assert (
        run(lifecycle, lambda pool: registry.get_active(pool, MODEL_NAME)).version
        == "29990301.000001"
    )
    rolled = trainer_cli(lifecycle, "models", "rollback", "--reason", "cli back")
    assert rolled.returncode == 0, rolled.stderr
    assert run(lifecycle, lambda pool: registry.get_active(pool, MODEL_NAME)).version == before
    assert "29990301.000001" in trainer_cli(lifecycle, "models", "list").stdout


def test_gate_compares_recall_and_balanced_accuracy() -> None:
    def version(recall: float, bacc: float) -> registry.ModelVersion:
        card = {"cross_validation": {
            "recall": {"mean": recall, "std": 0.0},
            "balanced_accuracy": {"mean": bacc, "std": 0.0},
        }}  # fmt: skip
        return registry.ModelVersion(
            MODEL_NAME, f"{recall}-{bacc}", "file:///x", "0" * 64, card, "candidate",
            None, datetime.now(UTC), None, None,
        )  # fmt: skip

    active = version(0.95, 0.75)
    assert registry.promotion_decision(version(0.95, 0.75), active, 0.01)[0]
    assert registry.promotion_decision(version(0.945, 0.745), active, 0.01)[0]
    kept, why = registry.promotion_decision(version(0.90, 0.80), active, 0.01)
    assert not kept
    assert "recall 0.900 < 0.950" in why
    kept, why = registry.promotion_decision(version(0.96, 0.70), active, 0.01)
    assert not kept
    assert "balanced_accuracy" in why
    assert registry.promotion_decision(version(0.5, 0.5), None, 0.01) == (
        True,
        "no version was active",
    )


def gate_version(version: str, **metrics: float) -> registry.ModelVersion:
    """A registered version whose card's cross-validation has `metrics` (means)."""
    card = {
        "cross_validation": {name: {"mean": mean, "std": 0.0} for name, mean in metrics.items()}
    }
    return registry.ModelVersion(
        MODEL_NAME, version, "file:///x", "0" * 64, card, "candidate",
        None, datetime.now(UTC), None, None,
    )  # fmt: skip


def test_gate_compares_melanoma_recall_when_both_cards_have_it() -> None:
    active = gate_version("active", recall=0.95, balanced_accuracy=0.75, melanoma_recall=0.90)
    same = gate_version("same", recall=0.95, balanced_accuracy=0.75, melanoma_recall=0.90)
    promote, why = registry.promotion_decision(same, active, 0.01)
    assert promote
    assert "melanoma_recall 0.900 vs 0.900" in why
    slightly = gate_version("slightly", recall=0.95, balanced_accuracy=0.75, melanoma_recall=0.895)
    assert registry.promotion_decision(slightly, active, 0.01)[0]
    # Better on cancer overall, but it misses melanomas the active version flags.
    fewer = gate_version("fewer", recall=0.97, balanced_accuracy=0.80, melanoma_recall=0.80)
    promote, why = registry.promotion_decision(fewer, active, 0.01)
    assert not promote
    assert "melanoma_recall 0.800 < 0.900 - 0.01" in why
    assert "recall 0.970" not in why
    # Every metric that is worse is named.
    worse = gate_version("worse", recall=0.90, balanced_accuracy=0.75, melanoma_recall=0.80)
    promote, why = registry.promotion_decision(worse, active, 0.01)
    assert not promote
    assert "recall 0.900 < 0.950" in why
    assert "melanoma_recall 0.800 < 0.900" in why


def test_gate_keeps_a_candidate_without_melanoma_recall_when_the_active_has_it() -> None:
    active = gate_version("active", recall=0.95, balanced_accuracy=0.75, melanoma_recall=0.90)
    # Better on both cancer figures, but a one-output model (or an older card) cannot show
    # that it flags melanomas as well.
    candidate = gate_version("old-style", recall=0.99, balanced_accuracy=0.90)
    promote, why = registry.promotion_decision(candidate, active, 0.01)
    assert not promote
    assert "active version active has a cross-validated melanoma_recall" in why
    assert "the candidate's card has none" in why


def test_gate_without_melanoma_recall_on_the_active_card_compares_the_rest() -> None:
    """An active version from before the melanoma rule: the candidate's melanoma recall has
    nothing to be compared with; recall and balanced accuracy decide."""
    active = gate_version("active", recall=0.95, balanced_accuracy=0.75)
    candidate = gate_version("new", recall=0.95, balanced_accuracy=0.76, melanoma_recall=0.5)
    promote, why = registry.promotion_decision(candidate, active, 0.01)
    assert promote
    assert "melanoma_recall" not in why
    worse = gate_version("new-worse", recall=0.90, balanced_accuracy=0.76, melanoma_recall=1.0)
    promote, why = registry.promotion_decision(worse, active, 0.01)
    assert not promote
    assert "recall 0.900 < 0.950" in why
