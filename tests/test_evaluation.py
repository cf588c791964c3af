"""Folds grouped by patient, metrics against scikit-learn, the threshold choice, and the paired
bootstrap of an AUC difference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    fbeta_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from skinscreen.core.pad_ufes import load_pad_ufes
from skinscreen.trainer.evaluation import (
    binary_metrics,
    choose_threshold,
    paired_auc_difference,
    patient_folds,
    summarise,
)

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 400)
PROBABILITIES = np.clip(LABELS * 0.3 + RNG.random(400) * 0.7, 0, 1)


def test_metrics_agree_with_scikit_learn_by_hand() -> None:
    threshold = 0.5
    metrics = binary_metrics(LABELS, PROBABILITIES, threshold, (1.0, 3.0, 10.0))
    predicted = (PROBABILITIES >= threshold).astype(int)
    tp = int(((predicted == 1) & (LABELS == 1)).sum())
    tn = int(((predicted == 0) & (LABELS == 0)).sum())
    fp = int(((predicted == 1) & (LABELS == 0)).sum())
    fn = int(((predicted == 0) & (LABELS == 1)).sum())
    assert metrics["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert metrics["recall"] == pytest.approx(tp / (tp + fn))
    assert metrics["specificity"] == pytest.approx(tn / (tn + fp))
    assert metrics["precision"] == pytest.approx(tp / (tp + fp))
    assert metrics["accuracy"] == pytest.approx((tp + tn) / len(LABELS))
    assert metrics["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(LABELS, predicted))
    assert metrics["recall"] == pytest.approx(recall_score(LABELS, predicted))
    assert metrics["precision"] == pytest.approx(precision_score(LABELS, predicted))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(LABELS, PROBABILITIES))
    for beta in (1, 3, 10):
        assert metrics[f"f{beta}"] == pytest.approx(fbeta_score(LABELS, predicted, beta=beta))


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_recall_threshold_is_the_highest_that_reaches_the_target(target: float) -> None:
    threshold = choose_threshold(LABELS, PROBABILITIES, "recall", recall_target=target)
    assert recall_score(LABELS, PROBABILITIES >= threshold.value) >= target
    above = np.nextafter(threshold.value, 1.0)
    assert recall_score(LABELS, PROBABILITIES >= above) < target
    assert str(target) in threshold.description


def test_fbeta_threshold_maximises_fbeta() -> None:
    threshold = choose_threshold(LABELS, PROBABILITIES, "fbeta", beta=3.0)
    best = fbeta_score(LABELS, PROBABILITIES >= threshold.value, beta=3.0)
    for candidate in np.linspace(0, 1, 101):
        assert fbeta_score(LABELS, PROBABILITIES >= candidate, beta=3.0, zero_division=0) <= best
    assert threshold.method == "fbeta"


def test_threshold_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="without any cancer"):
        choose_threshold(np.zeros(5, dtype=int), np.linspace(0, 1, 5), "recall")
    with pytest.raises(ValueError, match=r"recall_target must lie in \(0, 1\]"):
        choose_threshold(LABELS, PROBABILITIES, "recall", recall_target=1.5)


def test_summary_is_mean_and_population_std() -> None:
    folds = [binary_metrics(LABELS[i::3], PROBABILITIES[i::3], 0.5, (1.0,)) for i in range(3)]
    summary = summarise(folds)
    recalls = [fold["recall"] for fold in folds]
    assert summary["recall"]["mean"] == pytest.approx(np.mean(recalls))
    assert summary["recall"]["std"] == pytest.approx(np.std(recalls))
    assert "confusion_matrix" not in summary


@pytest.mark.data
def test_no_patient_is_in_two_folds_on_the_real_data(pad_ufes_dir) -> None:
    dataset = load_pad_ufes(pad_ufes_dir)
    labels, groups = dataset.labels, dataset.groups
    folds = patient_folds(labels, groups, 5, seed=0)
    assert len(folds) == 5
    seen: set[str] = set()
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(len(dataset)))  # every photo tested exactly once
    for train, test in folds:
        test_patients = set(groups[test])
        assert not test_patients & set(groups[train])
        assert not test_patients & seen
        seen |= test_patients
        # Stratified: every fold's cancer share is near the overall share.
        assert abs(labels[test].mean() - labels.mean()) < 0.06
    # The data really has patients with several photos, so the grouping matters.
    assert len(set(groups)) < len(groups)


def test_too_few_patients_for_the_folds() -> None:
    with pytest.raises(ValueError, match="5 folds need at least 5 patients; the data has 3"):
        patient_folds(np.array([0, 1, 0, 1]), np.array(["a", "b", "c", "c"]), 5, seed=0)


def test_paired_auc_difference_of_a_model_with_itself_is_zero() -> None:
    groups = np.arange(len(LABELS)) // 2
    same = paired_auc_difference(LABELS, groups, PROBABILITIES, PROBABILITIES, rounds=200)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert same.share_not_better == 1.0


def test_paired_auc_difference_finds_a_better_model_and_draws_whole_groups() -> None:
    better = np.clip(LABELS * 0.6 + RNG.random(len(LABELS)) * 0.4, 0, 1)
    groups = np.arange(len(LABELS)) // 4
    result = paired_auc_difference(LABELS, groups, PROBABILITIES, better, rounds=300, seed=1)
    expected = roc_auc_score(LABELS, better) - roc_auc_score(LABELS, PROBABILITIES)
    assert result.difference == pytest.approx(expected)
    assert 0 < result.low < result.difference < result.high
    assert result.share_not_better == 0.0
    # Reproducible from its seed; another seed draws other resamples.
    again = paired_auc_difference(LABELS, groups, PROBABILITIES, better, rounds=300, seed=1)
    assert (again.low, again.high) == (result.low, result.high)
    assert paired_auc_difference(LABELS, groups, PROBABILITIES, better, rounds=300).low != (
        result.low
    )


def test_paired_auc_difference_redraws_resamples_with_one_class() -> None:
    # Two groups, one per class: half of all resamples hold one class and have no AUC.
    labels = np.array([0, 0, 1, 1])
    result = paired_auc_difference(
        labels, np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4]), labels * 1.0, rounds=50
    )
    assert result.rounds == 50
    assert result.difference == 0.0
