"""The decision rule served on real photos: a model with the six diagnoses and its melanoma
threshold, and the shipped one-output model beside it, through the whole stack.

The two-output model is a real one, trained by the real trainer (`dual_output_model`). It
is published again under a version of its own whose card sets both thresholds, chosen from
a direct ONNX Runtime run of the photos submitted here so that one screening is suspicious
by the melanoma rule alone, one by the cancer rule alone and one by neither: each rule is
provably exercised.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from skinscreen.core.card import (
    DecisionThreshold,
    ModelCard,
    publish,
    read_card,
    verified_model,
)
from skinscreen.core.decision import MELANOMA_INDEX, DecisionRule
from skinscreen.inference.model import ModelOutputsError, load_model
from skinscreen.runtime import registry
from tests.deploy.conftest import Scrape
from tests.serving.conftest import (
    MODEL_NAME,
    DirectRun,
    Lifecycle,
    Photo,
    check_result,
    direct_run,
    submit,
)
from tests.serving.variants import run

pytestmark = [pytest.mark.data, pytest.mark.timeout(900)]

# Photos whose direct run the thresholds are chosen from; all of them are submitted.
N_PHOTOS = 24
# Every probability is at least this far from a threshold: far above the 1e-5 by which a
# served probability may differ from the direct run (another batch, another thread count).
MARGIN = 1e-4
DUAL_VERSION = "29990501.000001"
# The shipped fusion model from before the diagnosis output: cancer_probability alone.
ONE_OUTPUT_VERSION = "20261122.041231"

MELANOMA_ONLY = ["melanoma_probability"]
CANCER_ONLY = ["cancer_probability"]
BOTH = ["cancer_probability", "melanoma_probability"]


def cuts(values: np.ndarray) -> list[float]:
    """Thresholds between consecutive distinct values, each at least MARGIN from every value."""
    ordered = np.unique(values)
    return [
        float((low + high) / 2)
        for low, high in itertools.pairwise(ordered)
        if high - low > 2 * MARGIN
    ]


def choose_thresholds(direct: DirectRun) -> tuple[float, float]:
    """(cancer, melanoma) thresholds under which the photos fall into melanoma-only,
    cancer-only and neither (and both, when some pair of thresholds allows it)."""
    assert direct.diagnoses is not None
    cancer, melanoma = direct.cancer, direct.diagnoses[:, MELANOMA_INDEX]
    best: tuple[tuple[int, int], tuple[float, float]] | None = None
    for cancer_cut in cuts(cancer):
        for melanoma_cut in cuts(melanoma):
            kinds = Counter(zip(cancer >= cancer_cut, melanoma >= melanoma_cut, strict=True))
            if not all(kinds[kind] for kind in ((False, True), (True, False), (False, False))):
                continue
            # Prefer all four kinds, then the most photos of the rarest kind.
            score = (len(kinds), min(kinds.values()))
            if best is None or score > best[0]:
                best = (score, (cancer_cut, melanoma_cut))
    if best is None:
        pytest.fail(
            "no thresholds split the photos into melanoma-only, cancer-only and neither; "
            f"cancer {np.round(cancer, 4).tolist()}, melanoma {np.round(melanoma, 4).tolist()}"
        )
    return best[1]


def promote(lifecycle: Lifecycle, version: str) -> dict[str, Any]:
    response = httpx.post(
        f"{lifecycle.url}/v1/models/{MODEL_NAME}/versions/{version}/promote",
        json={"reason": "decision rule test", "requested_by": "test"},
        headers=lifecycle.keys.operator,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def screen(lifecycle: Lifecycle, photos: list[Photo]) -> list[dict[str, Any]]:
    """Submit each photo; return each screening once it is done (or fail on failure).

    Submitted after the promotion returned, each is scored by the version promoted: a
    result the previous version scored is refused by the database and scored again.
    """
    with httpx.Client(
        base_url=lifecycle.url, headers=lifecycle.keys.clinician, timeout=60
    ) as client:
        locations = []
        for photo in photos:
            response = submit(client, photo)
            assert response.status_code == 202, response.text
            locations.append(response.headers["Location"])
        finished = []
        for location in locations:
            deadline = time.monotonic() + 180
            while True:
                body = client.get(location, params={"wait": 20}).json()
                if body["status"] in ("done", "failed"):
                    break
                assert time.monotonic() < deadline, f"{location} is still {body['status']}"
            assert body["status"] == "done", body
            finished.append(body)
    return finished


@dataclass
class DualModel:
    card: ModelCard
    folder: Path
    photos: list[Photo]
    direct: DirectRun


@pytest.fixture(scope="module")
def dual_model(
    lifecycle: Lifecycle, dual_output_model: Path, photos: list[Photo], tmp_path_factory: Any
) -> DualModel:
    """The trained two-output model, published again with thresholds chosen for the photos."""
    model_path, trained = verified_model(dual_output_model)
    chosen = photos[:N_PHOTOS]
    direct = direct_run(model_path, trained, chosen)
    cancer_cut, melanoma_cut = choose_thresholds(direct)
    card = ModelCard.model_validate(
        {
            **trained.model_dump(),
            "version": DUAL_VERSION,
            "decision_threshold": DecisionThreshold(
                value=cancer_cut, method="test", description="chosen by test_melanoma_rule"
            ),
            "melanoma_threshold": DecisionThreshold(
                value=melanoma_cut, method="test", description="chosen by test_melanoma_rule"
            ),
        }
    )
    folder = publish(Path(lifecycle.store.base), model_path, card)
    assert read_card(folder) == card
    uri = lifecycle.store.uri(MODEL_NAME, DUAL_VERSION)
    run(lifecycle, lambda pool: registry.register(pool, card, uri))
    return DualModel(card, folder, chosen, direct)


def test_a_model_with_diagnoses_serves_them_and_its_melanoma_rule(
    lifecycle: Lifecycle, dual_model: DualModel
) -> None:
    card, direct = dual_model.card, dual_model.direct
    assert card.melanoma_threshold is not None
    rule = DecisionRule.from_card(card)
    assert direct.diagnoses is not None
    expected = [
        list(rule.reasons(float(cancer), row.astype(np.float64)))
        for cancer, row in zip(direct.cancer, direct.diagnoses, strict=True)
    ]
    # The thresholds make each rule fire on its own for some photo, and neither for another.
    assert MELANOMA_ONLY in expected
    assert CANCER_ONLY in expected
    assert [] in expected

    shown = promote(lifecycle, DUAL_VERSION)
    assert shown["status"] == "active"
    assert shown["outputs"] == ["cancer_probability", "diagnosis_probabilities"]
    assert shown["decision_threshold"] == card.decision_threshold.value
    assert shown["melanoma_threshold"] == card.melanoma_threshold.value
    port = lifecycle.worker.env["METRICS_PORT"]
    before = Scrape(f"http://127.0.0.1:{port}/metrics")

    screenings = screen(lifecycle, dual_model.photos)
    for index, (screening, reasons) in enumerate(zip(screenings, expected, strict=True)):
        result = screening["result"]
        check_result(result, card, direct, index)
        # Every probability is MARGIN from both thresholds: the direct run's reasons hold.
        assert result["reasons"] == reasons, (index, result)
    assert {tuple(s["result"]["reasons"]) for s in screenings} >= {
        ("melanoma_probability",),
        ("cancer_probability",),
        (),
    }

    # Listing shows each screening as reading it does.
    ids = {screening["id"]: screening for screening in screenings}
    listed = httpx.get(
        f"{lifecycle.url}/v1/screenings", params={"limit": 100}, headers=lifecycle.keys.clinician
    ).json()
    for item in listed["items"]:
        if item["id"] in ids:
            assert item["result"] == ids[item["id"]]["result"]
    assert len([item for item in listed["items"] if item["id"] in ids]) == len(ids)

    # The database keeps what the rule was decided with.
    rows = lifecycle.database.fetch(
        "SELECT id::text, reasons, threshold, melanoma_threshold,"
        " diagnosis_probabilities ->> 'MEL' AS melanoma FROM screenings"
        " WHERE id = ANY($1::uuid[])",
        list(ids),
    )
    for row in rows:
        result = ids[row["id"]]["result"]
        assert row["reasons"] == result["reasons"]
        assert (row["threshold"], row["melanoma_threshold"]) == (
            card.decision_threshold.value,
            card.melanoma_threshold.value,
        )
        assert float(row["melanoma"]) == result["diagnoses"][MELANOMA_INDEX]["probability"]

    # The worker counts suspicious screenings by the rules that fired, and nothing else.
    after = Scrape(f"http://127.0.0.1:{port}/metrics")
    counted = Counter("+".join(reasons) for reasons in expected if reasons)
    metric = "skinscreen_inference_suspicious_total"
    for fired in ("+".join(CANCER_ONLY), "+".join(MELANOMA_ONLY), "+".join(BOTH)):
        labels = {"model_version": DUAL_VERSION, "reasons": fired}
        # The version was never served before this test: its series start at the first count.
        now = after.value(metric, **labels) if counted[fired] else after.count(metric, **labels)
        assert now - before.count(metric, **labels) == counted[fired]
    assert {frozenset(labels) for labels in after.labels(metric)} == {
        frozenset({"model_version", "reasons"})
    }


def test_a_model_without_diagnoses_still_serves_by_its_cancer_rule(
    lifecycle: Lifecycle, photos: list[Photo]
) -> None:
    folder = Path(lifecycle.store.base) / MODEL_NAME / ONE_OUTPUT_VERSION
    model_path, card = verified_model(folder)
    assert card.outputs == ("cancer_probability",)
    assert card.melanoma_threshold is None
    shown = promote(lifecycle, ONE_OUTPUT_VERSION)
    assert shown["outputs"] == ["cancer_probability"]
    assert shown["melanoma_threshold"] is None

    chosen = photos[:8]
    direct = direct_run(model_path, card, chosen)
    assert direct.diagnoses is None
    screenings = screen(lifecycle, chosen)
    for index, screening in enumerate(screenings):
        result = screening["result"]
        check_result(result, card, direct, index)
        assert result["diagnoses"] is None
        assert result["melanoma_threshold"] is None
        assert result["reasons"] == (
            CANCER_ONLY if result["cancer_probability"] >= card.decision_threshold.value else []
        )
    # The shipped model flags some of these photos and not others.
    assert {screening["result"]["suspicious"] for screening in screenings} == {True, False}

    versions = httpx.get(
        f"{lifecycle.url}/v1/models/{MODEL_NAME}/versions", headers=lifecycle.keys.clinician
    ).json()["items"]
    by_version = {item["version"]: item for item in versions}
    assert by_version[ONE_OUTPUT_VERSION]["outputs"] == ["cancer_probability"]
    assert by_version[ONE_OUTPUT_VERSION]["melanoma_threshold"] is None


def test_a_card_declaring_an_output_its_graph_lacks_is_not_served(model_store: Path) -> None:
    """The worker runs the outputs the card declares; a graph without one of them fails to
    load (and the version serving keeps serving), rather than answering without it."""
    model_path, card = verified_model(model_store / MODEL_NAME / ONE_OUTPUT_VERSION)
    data = model_path.read_bytes()
    assert load_model(data, card).card == card  # as published, it loads
    claims_more = card.model_copy(
        update={"outputs": ("cancer_probability", "diagnosis_probabilities")}
    )
    with pytest.raises(ModelOutputsError, match="missing \\['diagnosis_probabilities'\\]"):
        load_model(data, claims_more)


def test_a_result_written_by_the_previous_release_reads_by_its_cancer_rule(
    lifecycle: Lifecycle, photos: list[Photo]
) -> None:
    """During a rolling upgrade a worker of the release before the melanoma rule writes no
    reasons, diagnoses or melanoma threshold; the gateway reads its verdict as the cancer
    rule's, which is the only rule that worker knew."""
    (screening,) = screen(lifecycle, photos[4:5])
    lifecycle.database.fetch(
        "UPDATE screenings SET reasons = NULL, diagnosis_probabilities = NULL,"
        " melanoma_threshold = NULL, suspicious = true WHERE id = $1::uuid RETURNING id",
        screening["id"],
    )
    result = httpx.get(
        f"{lifecycle.url}/v1/screenings/{screening['id']}", headers=lifecycle.keys.clinician
    ).json()["result"]
    assert result["suspicious"] is True
    assert result["reasons"] == CANCER_ONLY
    assert result["diagnoses"] is None
    assert result["melanoma_threshold"] is None
    lifecycle.database.fetch(
        "UPDATE screenings SET suspicious = false WHERE id = $1::uuid RETURNING id",
        screening["id"],
    )
    result = httpx.get(
        f"{lifecycle.url}/v1/screenings/{screening['id']}", headers=lifecycle.keys.clinician
    ).json()["result"]
    assert (result["suspicious"], result["reasons"]) == (False, [])
