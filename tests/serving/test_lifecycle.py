"""Model lifecycle on real servers: registry, promotion checks, hot swap, rollback, the CLI.

The second version is a real model: the shipped ONNX with its classifier's
cancer biases shifted, so its probabilities differ and a result tagged with
the wrong version would not match a direct ONNX Runtime run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from redis import Redis

from skinscreen.core.card import MODEL_FILE, file_sha256, read_card
from skinscreen.core.clinical import encode_many
from skinscreen.core.imaging import load_and_preprocess
from skinscreen.core.pad_ufes import CANCER_DIAGNOSES, DIAGNOSES
from skinscreen.runtime import registry
from skinscreen.runtime.database import create_pool
from tests.serving.conftest import MODEL_NAME, Lifecycle, Photo, submit

pytestmark = pytest.mark.timeout(300)


def publish_variant(lifecycle: Lifecycle, version: str, shift: float, tmp: Path) -> str:
    """Publish the shipped model with every member's cancer logits shifted by `shift`."""
    source = Path(lifecycle.store.base) / MODEL_NAME / lifecycle.shipped_version
    graph = onnx.load(str(source / MODEL_FILE))
    cancer = np.array([diagnosis in CANCER_DIAGNOSES for diagnosis in DIAGNOSES])
    for initializer in graph.graph.initializer:
        if initializer.name.endswith("head.classifier.4.bias"):
            bias = numpy_helper.to_array(initializer) + shift * cancer
            initializer.CopyFrom(numpy_helper.from_array(bias.astype(np.float32), initializer.name))
    model_file = tmp / f"{version}.onnx"
    onnx.save(graph, str(model_file))
    card = read_card(source).model_copy(
        update={"version": version, "sha256": file_sha256(model_file)}
    )
    uri = lifecycle.store.publish(model_file, card)
    run(lifecycle, lambda pool: registry.register(pool, card, uri))
    return uri


def run(lifecycle: Lifecycle, work: Any) -> Any:
    async def go() -> Any:
        pool = await create_pool(lifecycle.env["DATABASE_URL"], max_size=2)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(go())


def direct_probabilities(lifecycle: Lifecycle, version: str, photos: list[Photo]) -> np.ndarray:
    folder = Path(lifecycle.store.base) / MODEL_NAME / version
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    images = np.stack([load_and_preprocess(photo.path, 224) for photo in photos])
    clinical = encode_many([photo.clinical for photo in photos])
    (probabilities,) = session.run(["cancer_probability"], {"image": images, "clinical": clinical})
    return np.asarray(probabilities)


class Traffic:
    """Clients posting real photos without pause until stopped; remembers what they sent."""

    def __init__(self, url: str, photos: list[Photo], clients: int = 3) -> None:
        self.url = url
        self.photos = photos
        self.sent: dict[str, Photo] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(index,)) for index in range(clients)
        ]

    def _client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            sent = index
            while not self._stop.is_set():
                photo = self.photos[sent % len(self.photos)]
                response = submit(client, photo)
                if response.status_code != 202:
                    self.errors.append(response.text)
                    continue
                self.sent[response.json()["id"]] = photo
                client.get(response.headers["Location"], params={"wait": 30})
                sent += 3

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def wait_for_version(lifecycle: Lifecycle, version: str, after: datetime) -> None:
    """Until some screening finished after `after` carries `version` (the worker switched)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if lifecycle.database.value(
            "SELECT count(*) FROM screenings WHERE model_version = $1 AND completed_at > $2",
            version,
            after,
        ):
            return
        time.sleep(0.2)
    raise TimeoutError(f"no screening was scored by {version}")


def switch(lifecycle: Lifecycle, path: str, reason: str) -> httpx.Response:
    return httpx.post(f"{lifecycle.url}{path}", json={"reason": reason, "requested_by": "test"})


@pytest.mark.data
def test_hot_swap_and_rollback_under_traffic(
    lifecycle: Lifecycle, photos: list[Photo], tmp_path: Path
) -> None:
    """Promote, then roll back, while screenings flow: none fails, each carries the version
    active when its result was written, and its probability is that version's."""
    shipped = lifecycle.shipped_version
    publish_variant(lifecycle, "29990101.000001", shift=1.5, tmp=tmp_path)
    sample = photos[:60]
    with Traffic(lifecycle.url, sample) as traffic:
        time.sleep(2)
        started = datetime.now(UTC)
        promoted = switch(
            lifecycle, f"/v1/models/{MODEL_NAME}/versions/29990101.000001/promote", "test"
        )
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["status"] == "active"
        wait_for_version(lifecycle, "29990101.000001", started)
        time.sleep(1)
        back = datetime.now(UTC)
        rolled = switch(lifecycle, f"/v1/models/{MODEL_NAME}/rollback", "test rollback")
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["version"] == shipped
        wait_for_version(lifecycle, shipped, back)
        time.sleep(1)
    assert not traffic.errors

    ids = list(traffic.sent)
    deadline = time.monotonic() + 60
    while lifecycle.database.value(
        "SELECT count(*) FROM screenings WHERE id = ANY($1::uuid[]) AND status IN"
        " ('queued', 'running')",
        ids,
    ):
        assert time.monotonic() < deadline, "screenings still unfinished"
        time.sleep(0.2)
    rows = lifecycle.database.fetch(
        "SELECT id::text, status, model_version, cancer_probability, completed_at"
        " FROM screenings WHERE id = ANY($1::uuid[])",
        ids,
    )
    assert [row["status"] for row in rows].count("done") == len(rows), "a screening failed"
    versions = {row["model_version"] for row in rows}
    assert versions == {shipped, "29990101.000001"}

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
    Redis.from_url(lifecycle.env["REDIS_URL"]).publish(
        registry.ACTIVATIONS_CHANNEL, registry.activation_message(announced)
    )
    deadline = time.monotonic() + 30
    while (
        "could not load skinscreen-fusion 29990101.000002" not in lifecycle.worker.log.read_text()
    ):
        assert time.monotonic() < deadline, "the failed load was not reported"
        time.sleep(0.2)
    with httpx.Client(base_url=lifecycle.url, timeout=60) as client:
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

    listed = httpx.get(f"{lifecycle.url}/v1/models/{MODEL_NAME}/versions").json()["items"]
    statuses = {item["version"]: item["status"] for item in listed}
    assert statuses[before] == "active"
    assert list(statuses.values()).count("active") == 1
    assert statuses["29990101.000003"] == "candidate"


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
    for version in ("29990201.000001", "29990201.000002"):
        publish_variant(lifecycle, version, shift=0.25, tmp=tmp_path)
        response = switch(lifecycle, f"/v1/models/{MODEL_NAME}/versions/{version}/promote", "p")
        assert response.status_code == 200, response.text
    first = switch(lifecycle, f"/v1/models/{MODEL_NAME}/rollback", "r1").json()
    second = switch(lifecycle, f"/v1/models/{MODEL_NAME}/rollback", "r2").json()
    assert (first["version"], second["version"]) == ("29990201.000001", start)
    history = httpx.get(f"{lifecycle.url}/v1/models/{MODEL_NAME}/activations").json()["items"]
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
