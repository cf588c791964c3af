"""Nested, repeated, patient-grouped validation: what each fold's rule may see, and the rule."""

from __future__ import annotations

import numpy as np
import pytest

from skinscreen.core.pad_ufes import DIAGNOSES
from skinscreen.trainer.validation import (
    ChosenRule,
    RuleTargets,
    choose_rule,
    grouped_folds,
    nested_cross_validate,
    pooled_estimates,
    pooled_metrics,
)

MEL, NEV, BCC = DIAGNOSES.index("MEL"), DIAGNOSES.index("NEV"), DIAGNOSES.index("BCC")


def _data(n_patients: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two photos per patient; every diagnosis present, melanoma rare."""
    generator = np.random.default_rng(seed)
    per_patient = generator.choice(len(DIAGNOSES), n_patients, p=[0.25, 0.3, 0.08, 0.15, 0.1, 0.12])
    diagnoses = np.repeat(per_patient, 2)
    groups = np.repeat(np.array([f"PAT_{i}" for i in range(n_patients)]), 2)
    return diagnoses, groups


def _informative(diagnoses: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """[N, 2] cancer and melanoma probabilities that carry signal plus noise."""
    generator = np.random.default_rng(seed)
    cancer = np.isin(diagnoses[rows], [1, 2, 4]).astype(float)
    melanoma = (diagnoses[rows] == MEL).astype(float)
    return np.clip(
        np.stack([0.6 * cancer, 0.5 * melanoma], axis=1)
        + generator.uniform(0, 0.5, (len(rows), 2)),
        0,
        1,
    )


def test_no_fold_is_scored_under_a_rule_or_model_that_saw_it() -> None:
    diagnoses, groups = _data()
    fits: list[tuple[set[int], set[int]]] = []

    def fit_predict(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
        assert not set(train) & set(test)
        fits.append((set(train.tolist()), set(test.tolist())))
        return _informative(diagnoses, test, seed)

    cv = nested_cross_validate(
        fit_predict,
        diagnoses,
        groups,
        repeats=2,
        n_folds=4,
        inner_folds=3,
        seed=7,
        targets=RuleTargets(0.9, 0.9),
    )
    assert len(cv.folds) == 2 * 4
    # Per outer fold: 3 inner fits, then the outer fit.
    assert len(fits) == 2 * 4 * (3 + 1)
    for number, fold in enumerate(cv.folds):
        test = set(fold.test.tolist())
        fold_fits = fits[number * 4 : number * 4 + 4]
        # Nothing that chose this fold's rule was trained on, or predicted, a row of its fold.
        for trained, predicted in fold_fits[:3]:
            assert not trained & test
            assert not predicted & test
        # The rule is exactly the one its inner predictions give.
        assert fold.rule == choose_rule(diagnoses[fold.train], fold.inner, cv.targets)
        assert not np.isnan(fold.inner).any()
        # Patients never straddle a fold.
        assert not set(groups[fold.train]) & set(groups[fold.test])
        assert fold_fits[3] == (set(fold.train.tolist()), test)
    # Each repeat scores every photo exactly once.
    assert not np.isnan(cv.probabilities).any()


def test_other_targets_are_rechosen_inside_each_fold_without_refitting() -> None:
    diagnoses, groups = _data()
    calls = []

    def fit_predict(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
        calls.append(seed)
        return _informative(diagnoses, test, seed)

    cv = nested_cross_validate(
        fit_predict,
        diagnoses,
        groups,
        repeats=1,
        n_folds=3,
        inner_folds=3,
        seed=0,
        targets=RuleTargets(0.9, None),
    )
    fitted = len(calls)
    stricter = cv.flags_for(RuleTargets(1.0, 1.0))
    assert len(calls) == fitted
    # Catching every inner cancer and melanoma flags at least as much as the looser rule.
    assert (stricter >= cv.flagged).all()
    cancer = np.isin(diagnoses, [1, 2, 4])
    assert stricter[:, cancer].mean() >= cv.flagged[:, cancer].mean()


def test_the_rule_fires_on_either_threshold() -> None:
    probabilities = np.array([[0.5, 0.0], [0.1, 0.3], [0.1, 0.1], [0.3, 0.2]])
    rule = ChosenRule(cancer=0.3, melanoma=0.2)
    np.testing.assert_array_equal(rule.flag(probabilities), [True, True, False, True])
    np.testing.assert_array_equal(
        ChosenRule(cancer=0.3, melanoma=None).flag(probabilities), [True, False, False, True]
    )


def test_choose_rule_reaches_each_target_on_the_predictions_it_is_chosen_on() -> None:
    diagnoses = np.array([BCC] * 10 + [MEL] * 4 + [NEV] * 10)
    generator = np.random.default_rng(0)
    probabilities = generator.uniform(0, 1, (len(diagnoses), 2))
    rule = choose_rule(diagnoses, probabilities, RuleTargets(0.9, 0.75))
    cancer = np.isin(diagnoses, [BCC, MEL])
    assert (probabilities[cancer, 0] >= rule.cancer).mean() >= 0.9
    assert rule.melanoma is not None
    assert (probabilities[diagnoses == MEL, 1] >= rule.melanoma).mean() >= 0.75
    # The highest such thresholds: one step up loses the target.
    assert (probabilities[cancer, 0] > rule.cancer).mean() < 0.9
    assert (probabilities[diagnoses == MEL, 1] > rule.melanoma).mean() < 0.75


def test_no_melanoma_rule_without_a_melanoma_or_without_its_probability() -> None:
    diagnoses = np.array([BCC] * 5 + [NEV] * 5)
    probabilities = np.random.default_rng(0).uniform(0, 1, (10, 2))
    assert choose_rule(diagnoses, probabilities, RuleTargets(0.95, 0.95)).melanoma is None
    with_melanoma = np.array([BCC] * 5 + [MEL] + [NEV] * 4)
    cancer_only = probabilities.copy()
    cancer_only[:, 1] = np.nan
    assert choose_rule(with_melanoma, cancer_only, RuleTargets(0.95, 0.95)).melanoma is None


def test_grouped_folds_keep_patients_together_and_spread_melanoma() -> None:
    diagnoses, groups = _data(n_patients=100)
    folds = grouped_folds(diagnoses, groups, 5, seed=3)
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(
        range(len(diagnoses))
    )
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert (diagnoses[test] == MEL).any()
    with pytest.raises(ValueError, match="5 folds need at least 5 patients; the data has 2"):
        grouped_folds(diagnoses[:4], groups[:4], 5, seed=0)


def test_intervals_cover_the_point_estimate_and_narrow_with_more_patients() -> None:
    widths = []
    for patients in (60, 400):
        diagnoses, groups = _data(n_patients=patients, seed=1)

        def fit_predict(
            train: np.ndarray, test: np.ndarray, seed: int, known: np.ndarray = diagnoses
        ) -> np.ndarray:
            return _informative(known, test, seed)

        cv = nested_cross_validate(
            fit_predict,
            diagnoses,
            groups,
            repeats=2,
            n_folds=3,
            inner_folds=3,
            seed=0,
            targets=RuleTargets(0.9, 0.9),
        )
        estimates = pooled_estimates(cv, rounds=200)
        point = pooled_metrics(cv, cv.flagged)
        for key, estimate in estimates.metrics.items():
            assert estimate.value == point[key]
            assert estimate.low <= estimate.value <= estimate.high
        melanoma = estimates.flagged_by_diagnosis["MEL"]
        assert melanoma.n == int((diagnoses == MEL).sum())
        widths.append(estimates.metrics["recall"].high - estimates.metrics["recall"].low)
    assert widths[1] < widths[0]
