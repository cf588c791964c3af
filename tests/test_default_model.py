"""The model shipped in models/: intact, honest about its metrics, and serving the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from skinscreen.core.card import latest_version, verified_model
from skinscreen.core.pad_ufes import load_pad_ufes
from skinscreen.trainer.training import load_images
from tests.conftest import REPO

MODEL_NAME = "skinscreen-fusion"


@pytest.fixture(scope="module")
def shipped() -> Path:
    return latest_version(REPO / "models", MODEL_NAME)


def test_shipped_model_matches_its_card(shipped: Path) -> None:
    model_path, card = verified_model(shipped)  # raises on a sha256 mismatch
    assert card.name == MODEL_NAME
    assert card.version == shipped.name
    assert card.input_size == 224
    assert card.folds == 5
    assert card.decision_threshold.method == "recall"
    assert 0.0 < card.decision_threshold.value < 1.0
    assert model_path.stat().st_size < 50_000_000


def test_shipped_model_reached_the_targets_in_cross_validation(shipped: Path) -> None:
    """The goals of the training issue, as measured by the run that made the model."""
    _, card = verified_model(shipped)
    metrics = card.cross_validation
    assert metrics["roc_auc"].mean >= 0.86
    assert metrics["recall"].mean >= 0.93
    assert metrics["balanced_accuracy"].mean >= 0.75


@pytest.mark.data
def test_shipped_model_scores_real_photos(shipped: Path, pad_ufes_dir: Path) -> None:
    model_path, card = verified_model(shipped)
    dataset = load_pad_ufes(pad_ufes_dir)
    # The card names the data it was trained on.
    assert card.data_fingerprint == dataset.fingerprint()
    rows = np.linspace(0, len(dataset) - 1, 24).astype(int)
    subset = dataset.subset(rows)
    images = load_images(subset, card.input_size).numpy()
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    probabilities = session.run(
        ["cancer_probability"], {"image": images, "clinical": subset.clinical}
    )[0]
    assert probabilities.shape == (24,)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
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
    np.testing.assert_allclose(one_by_one, probabilities, atol=1e-5)
