"""The model shipped in models/: intact, its card recomputable from its run's predictions,
the previous version kept for rollback, and serving the contract on real photos.

The newest version may be derived from the run's version without retraining (the same
weights in a leaner graph, `derived_from` on its card): the run's report then describes the
version it was derived from, and the derived one must give that version's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.metrics import roc_auc_score

from skinscreen.core.card import ModelCard, latest_version, read_card, verified_model
from skinscreen.core.decision import MELANOMA_INDEX, DecisionRule
from skinscreen.core.pad_ufes import load_pad_ufes
from skinscreen.trainer.training import load_images
from skinscreen.trainer.validation import (
    CANCER,
    MELANOMA,
    RuleTargets,
    SavedOutOfFold,
    choose_rule,
    pooled_metrics,
)
from tests.conftest import REPO

MODEL_NAME = "skinscreen-fusion"
PREVIOUS_VERSION = "20261122.041231"
REPORT = REPO / "docs" / "default-model"


@pytest.fixture(scope="module")
def shipped() -> Path:
    return latest_version(REPO / "models", MODEL_NAME)


def trained_version(folder: Path) -> Path:
    """The version a derived one was made from, through any chain; itself if trained."""
    card = read_card(folder)
    while card.derived_from is not None:
        folder = folder.parent / card.derived_from.version
        card = read_card(folder)
    return folder


@pytest.fixture(scope="module")
def trained(shipped: Path) -> Path:
    return trained_version(shipped)


def _without_identity(card: ModelCard) -> dict[str, object]:
    return card.model_dump(exclude={"version", "created_at", "sha256", "derived_from"})


@pytest.fixture(scope="module")
def saved() -> SavedOutOfFold:
    return SavedOutOfFold.load(REPORT / "validation.npz")


def test_shipped_model_matches_its_card_and_report(shipped: Path, trained: Path) -> None:
    model_path, card = verified_model(shipped)  # raises on a sha256 mismatch
    assert card.name == MODEL_NAME
    assert card.version == shipped.name
    assert card.outputs == ("cancer_probability", "diagnosis_probabilities")
    assert card.melanoma_threshold is not None
    assert card.out_of_sample is not None
    assert (card.out_of_sample.repeats, card.out_of_sample.folds) == (3, 5)
    assert model_path.stat().st_size < 50_000_000
    # docs/default-model is the report of the run that made this very file, or the file
    # this one was derived from.
    _, trained_card = verified_model(trained)
    report = json.loads((REPORT / "report.json").read_text())
    assert report["model"] == {
        "name": trained_card.name,
        "version": trained_card.version,
        "sha256": trained_card.sha256,
    }
    assert json.loads((REPORT / "card.json").read_text()) == json.loads(
        (trained / "card.json").read_text()
    )


@pytest.mark.parametrize(
    "folder",
    [
        folder
        for folder in sorted((REPO / "models").glob("*/*"))
        if (folder / "card.json").is_file() and read_card(folder).derived_from is not None
    ],
    ids=lambda folder: f"{folder.parent.name}/{folder.name}",
)
def test_a_derived_version_is_its_origin_in_a_new_graph(folder: Path) -> None:
    """Its card is the origin's but for version, created_at, sha256 and derived_from (the
    figures were measured on the origin), the origin is kept for rollback, and it is newer."""
    _, card = verified_model(folder)
    assert card.derived_from is not None
    _, origin = verified_model(folder.parent / card.derived_from.version)
    assert origin.sha256 == card.derived_from.sha256 != card.sha256
    assert _without_identity(card) == _without_identity(origin)
    assert card.version > origin.version
    assert card.derived_from.max_difference <= 1e-5
    assert card.derived_from.photos >= 40
    assert card.derived_from.reason


def test_card_thresholds_and_figures_follow_from_the_runs_predictions(
    shipped: Path, saved: SavedOutOfFold
) -> None:
    """Not a re-read of the card: its thresholds are chosen again, and its out-of-sample
    figures computed again, from the out-of-fold predictions the run saved."""
    _, card = verified_model(shipped)
    assert card.melanoma_threshold is not None
    assert card.out_of_sample is not None
    targets = RuleTargets(
        card.decision_threshold.recall_target or 0.0,
        card.melanoma_threshold.recall_target,
    )
    repeats = saved.probabilities.shape[0]
    rule = choose_rule(
        np.tile(saved.diagnoses, repeats), saved.probabilities.reshape(-1, 2), targets
    )
    assert rule.cancer == pytest.approx(card.decision_threshold.value)
    assert rule.melanoma == pytest.approx(card.melanoma_threshold.value)

    with np.load(REPORT / "validation.npz") as folds:
        fold_of, thresholds = folds["fold"], folds["thresholds"]
    # Each photo's saved call is its own fold's rule applied to its own prediction.
    for repeat in range(repeats):
        fold_rule = thresholds[repeat, fold_of[repeat]]
        expected = (saved.probabilities[repeat, :, CANCER] >= fold_rule[:, 0]) | (
            saved.probabilities[repeat, :, MELANOMA] >= fold_rule[:, 1]
        )
        np.testing.assert_array_equal(saved.flagged[repeat], expected)

    recomputed = pooled_metrics(saved, saved.flagged)
    for key, estimate in card.out_of_sample.metrics.items():
        assert estimate.value == pytest.approx(recomputed[key]), key
        assert estimate.low <= estimate.value <= estimate.high
    for diagnosis, estimate in card.out_of_sample.flagged_by_diagnosis.items():
        assert estimate.value == pytest.approx(recomputed[f"flagged:{diagnosis}"]), diagnosis
    assert card.decision_threshold.recall == card.out_of_sample.metrics["recall"]
    assert card.melanoma_threshold.recall == card.out_of_sample.flagged_by_diagnosis["MEL"]
    # A floor, so that a worse model cannot be shipped unnoticed: the previous version's
    # cross-validated ROC AUC was 0.889.
    assert recomputed["roc_auc"] >= 0.889


def test_previous_version_is_kept_for_rollback() -> None:
    model_path, card = verified_model(REPO / "models" / MODEL_NAME / PREVIOUS_VERSION)
    assert card.outputs == ("cancer_probability",)
    assert model_path.is_file()


@pytest.mark.data
def test_shipped_model_scores_real_photos(shipped: Path, pad_ufes_dir: Path) -> None:
    model_path, card = verified_model(shipped)
    dataset = load_pad_ufes(pad_ufes_dir)
    # The card names the data it was trained on.
    assert card.data_fingerprint == dataset.fingerprint()
    rows = np.linspace(0, len(dataset) - 1, 40).astype(int)
    subset = dataset.subset(rows)
    images = load_images(subset, card.input_size).numpy()
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    cancer, diagnoses = session.run(None, {"image": images, "clinical": subset.clinical})
    assert cancer.shape == (40,)
    assert diagnoses.shape == (40, 6)
    np.testing.assert_allclose(diagnoses.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(cancer, diagnoses[:, [1, 2, 4]].sum(axis=1), atol=1e-5)
    # Photos it was trained on, so not an estimate of anything: a check that it tells
    # cancers from benign lesions at all, which a constant output would not.
    assert roc_auc_score(subset.labels, cancer) > 0.8
    rule = DecisionRule.from_card(card)
    flagged = rule.suspicious(cancer, diagnoses[:, MELANOMA_INDEX])
    assert flagged[subset.labels == 1].mean() > flagged[subset.labels == 0].mean()
    # A derived version gives the outputs of the version it was made from.
    if shipped != (trained := trained_version(shipped)):
        origin = ort.InferenceSession(
            str(verified_model(trained)[0]), providers=["CPUExecutionProvider"]
        )
        before = origin.run(None, {"image": images, "clinical": subset.clinical})
        np.testing.assert_allclose(cancer, before[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(diagnoses, before[1], atol=1e-5, rtol=0)
    # One by one gives the same answers as one batch: the batch axis is really dynamic.
    one_by_one = np.concatenate(
        [
            session.run(
                ["cancer_probability"],
                {"image": images[i : i + 1], "clinical": subset.clinical[i : i + 1]},
            )[0]
            for i in range(len(images))
        ]
    )
    np.testing.assert_allclose(one_by_one, cancer, atol=1e-5)
