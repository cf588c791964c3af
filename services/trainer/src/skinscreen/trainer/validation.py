"""What a new patient can expect: nested, repeated, patient-grouped cross-validation.

A threshold fitted on out-of-fold predictions and reported on the same
predictions overstates recall. Here every outer fold is scored under a decision
rule whose thresholds were chosen inside its training folds only (an inner
patient-grouped cross-validation of the training rows), exactly as production
chooses them for the final model, so the outer fold never influences the rule
it is scored under. Outer splits are repeated with different seeds: with a few
dozen melanomas, one split is mostly noise. Intervals come from resampling
patients, since photos of one patient are not independent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from skinscreen.core.card import DecisionThreshold, Estimate, OutOfSample
from skinscreen.core.decision import MELANOMA_INDEX, DecisionRule
from skinscreen.core.pad_ufes import CANCER_DIAGNOSES, DIAGNOSES
from skinscreen.trainer.evaluation import choose_threshold, group_bootstrap_weights

Folds = list[tuple[np.ndarray, np.ndarray]]
# (training rows, rows to predict, seed) -> [len(rows to predict), 2]: the cancer
# probability, and the melanoma probability (NaN for a model without the diagnoses).
FitPredict = Callable[[np.ndarray, np.ndarray, int], np.ndarray]

CANCER_MASK = np.array([diagnosis in CANCER_DIAGNOSES for diagnosis in DIAGNOSES])
CANCER, MELANOMA = 0, 1
# Seeds of repeat r are seed + r * REPEAT_SEED_STRIDE; fold i of a repeat adds i.
REPEAT_SEED_STRIDE = 100
INNER_SEED_OFFSET = 50
BOOTSTRAP_ROUNDS = 2000


def screening_probabilities(classes: np.ndarray, classes_are_diagnoses: bool) -> np.ndarray:
    """[N, 2] cancer and melanoma probabilities from class probabilities: the six
    diagnoses (cancer = BCC + MEL + SCC), or (not cancer, cancer) with no melanoma."""
    if classes_are_diagnoses:
        return np.stack([classes[:, CANCER_MASK].sum(axis=1), classes[:, MELANOMA_INDEX]], axis=1)
    return np.stack([classes[:, 1], np.full(len(classes), np.nan)], axis=1)


def grouped_folds(diagnoses: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> Folds:
    """Folds in which each patient's photos stay together, stratified by diagnosis so
    that every fold holds its share of the rare ones (melanoma)."""
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise ValueError(
            f"{n_folds} folds need at least {n_folds} patients; the data has {n_groups}"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(diagnoses)), diagnoses, groups))


@dataclass(frozen=True)
class RuleTargets:
    """The recall each threshold is chosen to reach on out-of-fold predictions."""

    cancer_recall: float = 0.95
    # None: no melanoma rule (a model without the six diagnoses).
    melanoma_recall: float | None = 0.95


@dataclass(frozen=True)
class ChosenRule:
    cancer: float
    melanoma: float | None

    @property
    def rule(self) -> DecisionRule:
        return DecisionRule(self.cancer, self.melanoma)

    def flag(self, probabilities: np.ndarray) -> np.ndarray:
        """[N] suspicious flags of [N, 2] cancer and melanoma probabilities."""
        melanoma = probabilities[:, MELANOMA] if self.melanoma is not None else None
        return self.rule.suspicious(probabilities[:, CANCER], melanoma)


def choose_rule(
    diagnoses: np.ndarray, probabilities: np.ndarray, targets: RuleTargets
) -> ChosenRule:
    """Thresholds from out-of-fold predictions: the highest cancer threshold reaching the
    cancer recall target, and the highest melanoma threshold at which the melanoma
    probability alone reaches the melanoma recall target.

    The melanoma threshold is chosen on its own rather than for the melanomas the cancer
    rule misses: those are one or two photos per fold, too few to fit a threshold to.
    """
    cancer_labels = CANCER_MASK[diagnoses].astype(np.int64)
    cancer = choose_threshold(
        cancer_labels, probabilities[:, CANCER], "recall", targets.cancer_recall
    ).value
    melanoma = None
    melanoma_labels = (diagnoses == MELANOMA_INDEX).astype(np.int64)
    # A small subset (a smoke run) may hold no melanoma to choose a threshold for.
    if (
        targets.melanoma_recall is not None
        and melanoma_labels.any()
        and not np.isnan(probabilities[:, MELANOMA]).any()
    ):
        melanoma = choose_threshold(
            melanoma_labels, probabilities[:, MELANOMA], "recall", targets.melanoma_recall
        ).value
    return ChosenRule(cancer, melanoma)


@dataclass
class OuterFold:
    repeat: int
    index: int
    train: np.ndarray
    test: np.ndarray
    # Inner out-of-fold [cancer, melanoma] probabilities of the training rows, by `train`:
    # what the fold's rule is chosen from, and re-chosen from for other targets.
    inner: np.ndarray
    rule: ChosenRule


class OutOfFold(Protocol):
    """Out-of-fold predictions and suspicious calls, one set per repeat: a nested
    cross-validation just run, or one read back from a run folder's validation.npz."""

    @property
    def diagnoses(self) -> np.ndarray: ...

    @property
    def groups(self) -> np.ndarray: ...

    @property
    def probabilities(self) -> np.ndarray: ...

    @property
    def flagged(self) -> np.ndarray: ...


@dataclass(frozen=True)
class SavedOutOfFold:
    diagnoses: np.ndarray
    groups: np.ndarray
    probabilities: np.ndarray
    flagged: np.ndarray

    @classmethod
    def load(cls, path: Path) -> SavedOutOfFold:
        with np.load(path) as saved:
            return cls(
                saved["diagnoses"], saved["groups"], saved["probabilities"], saved["flagged"]
            )


@dataclass
class NestedCrossValidation:
    diagnoses: np.ndarray
    groups: np.ndarray
    targets: RuleTargets
    folds: list[OuterFold]
    # Outer out-of-fold [cancer, melanoma] probabilities, one set per repeat: [repeats, N, 2].
    probabilities: np.ndarray
    repeats: int
    n_folds: int
    inner_folds: int
    flagged: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.flagged = self.flags_for(self.targets)

    def flags_for(self, targets: RuleTargets) -> np.ndarray:
        """[repeats, N] suspicious flags with each fold's rule chosen for `targets` on its
        own inner predictions; no outer prediction is refitted or looked at to choose."""
        flagged = np.zeros(self.probabilities.shape[:2], dtype=bool)
        for fold in self.folds:
            rule = (
                fold.rule
                if targets == self.targets
                else choose_rule(self.diagnoses[fold.train], fold.inner, targets)
            )
            flagged[fold.repeat, fold.test] = rule.flag(self.probabilities[fold.repeat, fold.test])
        return flagged

    @property
    def cancer_labels(self) -> np.ndarray:
        return CANCER_MASK[self.diagnoses].astype(np.int64)

    def fold_metrics(self) -> list[dict[str, float]]:
        """Each outer fold's metrics under its own rule."""
        return [
            rule_metrics(
                self.diagnoses[fold.test],
                self.probabilities[fold.repeat, fold.test],
                self.flagged[fold.repeat, fold.test],
            )
            for fold in self.folds
        ]


def nested_cross_validate(
    fit_predict: FitPredict,
    diagnoses: np.ndarray,
    groups: np.ndarray,
    *,
    repeats: int,
    n_folds: int,
    inner_folds: int,
    seed: int,
    targets: RuleTargets,
    progress: Callable[[str], None] = lambda _: None,
) -> NestedCrossValidation:
    """`repeats` x `n_folds` outer folds; each fold's rule chosen from an `inner_folds`
    cross-validation of its training rows, then its model fitted on all of them."""
    probabilities = np.full((repeats, len(diagnoses), 2), np.nan)
    folds: list[OuterFold] = []
    for repeat in range(repeats):
        repeat_seed = seed + REPEAT_SEED_STRIDE * repeat
        for index, (train, test) in enumerate(
            grouped_folds(diagnoses, groups, n_folds, repeat_seed)
        ):
            fold_seed = repeat_seed + index
            inner = np.full((len(train), 2), np.nan)
            inner_splits = grouped_folds(
                diagnoses[train], groups[train], inner_folds, fold_seed + INNER_SEED_OFFSET
            )
            for inner_index, (inner_train, inner_test) in enumerate(inner_splits):
                inner[inner_test] = fit_predict(
                    train[inner_train], train[inner_test], fold_seed * 10 + inner_index
                )
            rule = choose_rule(diagnoses[train], inner, targets)
            probabilities[repeat, test] = fit_predict(train, test, fold_seed)
            folds.append(OuterFold(repeat, index, train, test, inner, rule))
            progress(
                f"repeat {repeat + 1}/{repeats} fold {index + 1}/{n_folds}: thresholds "
                f"cancer {rule.cancer:.4f}, melanoma {rule.melanoma}"
            )
    return NestedCrossValidation(
        diagnoses, groups, targets, folds, probabilities, repeats, n_folds, inner_folds
    )


def rule_metrics(
    diagnoses: np.ndarray, probabilities: np.ndarray, flagged: np.ndarray
) -> dict[str, float]:
    """Cancer vs not (and melanoma) metrics of `flagged` suspicious calls."""
    cancer = CANCER_MASK[diagnoses]
    rate, weights = flagged.astype(np.float64), np.ones(len(flagged))
    return {
        "roc_auc": float(roc_auc_score(cancer, probabilities[:, CANCER]))
        if 0 < cancer.sum() < len(cancer)
        else float("nan"),
        **_rule_rates(cancer, rate, weights),
        "melanoma_recall": _share(rate, weights, diagnoses == MELANOMA_INDEX),
    }


def _share(rate: np.ndarray, weights: np.ndarray, rows: np.ndarray) -> float:
    """The weighted share of `rows` called suspicious (`rate`: 0 to 1 per photo)."""
    total = weights[rows].sum()
    return float((weights * rate)[rows].sum() / total) if total else float("nan")


def _rule_rates(cancer: np.ndarray, rate: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """Recall, specificity, balanced accuracy and precision of suspicious calls."""
    recall, specificity = _share(rate, weights, cancer), 1.0 - _share(rate, weights, ~cancer)
    flagged_weight = (weights * rate).sum()
    return {
        "recall": recall,
        "specificity": specificity,
        "balanced_accuracy": (recall + specificity) / 2,
        "precision": float((weights * rate)[cancer].sum() / flagged_weight)
        if flagged_weight
        else 0.0,
    }


def pooled_metrics(
    cv: OutOfFold, flagged: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, float]:
    """Metrics over all photos, each photo's flag averaged over the repeats (each repeat
    scored it once, from a model and rule that never saw it); `weights` count each photo
    (a bootstrap resample), one each by default. Also `flagged:<diagnosis>`, the share of
    that diagnosis' photos called suspicious."""
    rate = flagged.mean(axis=0)
    weights = np.ones(len(rate)) if weights is None else weights
    cancer = CANCER_MASK[cv.diagnoses]
    values = {
        "roc_auc": float(
            np.mean(
                [
                    roc_auc_score(cancer, p[:, CANCER], sample_weight=weights)
                    for p in cv.probabilities
                ]
            )
        ),
        **_rule_rates(cancer, rate, weights),
    }
    for index, diagnosis in enumerate(DIAGNOSES):
        values[f"flagged:{diagnosis}"] = _share(rate, weights, cv.diagnoses == index)
    return values


@dataclass(frozen=True)
class PooledEstimates:
    metrics: dict[str, Estimate]
    flagged_by_diagnosis: dict[str, Estimate]


def pooled_estimates(
    cv: OutOfFold,
    flagged: np.ndarray | None = None,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> PooledEstimates:
    """`pooled_metrics` with 95 % intervals from `rounds` patient bootstrap resamples,
    each drawing whole patients with replacement."""
    flagged = cv.flagged if flagged is None else flagged
    cancer = CANCER_MASK[cv.diagnoses]
    point = pooled_metrics(cv, flagged)
    draws = [
        pooled_metrics(cv, flagged, weights.astype(np.float64))
        for weights in group_bootstrap_weights(cancer, cv.groups, rounds, seed)
    ]

    def estimate(key: str, n: int | None) -> Estimate:
        spread = np.array([draw[key] for draw in draws])
        spread = spread[~np.isnan(spread)]
        return Estimate(
            value=point[key],
            low=float(np.percentile(spread, 2.5)),
            high=float(np.percentile(spread, 97.5)),
            n=n,
        )

    metrics = {
        "roc_auc": estimate("roc_auc", len(cancer)),
        "recall": estimate("recall", int(cancer.sum())),
        "specificity": estimate("specificity", int((~cancer).sum())),
        "balanced_accuracy": estimate("balanced_accuracy", len(cancer)),
        "precision": estimate("precision", None),
    }
    # A diagnosis the data lacks (a small subset) has nothing to estimate.
    by_diagnosis = {
        diagnosis: estimate(f"flagged:{diagnosis}", int((cv.diagnoses == index).sum()))
        for index, diagnosis in enumerate(DIAGNOSES)
        if (cv.diagnoses == index).any()
    }
    return PooledEstimates(metrics, by_diagnosis)


def out_of_sample(cv: NestedCrossValidation, estimates: PooledEstimates) -> OutOfSample:
    """The card's account of the estimates."""
    return OutOfSample(
        method=(
            f"{cv.repeats} x {cv.n_folds}-fold cross-validation grouped by patient, "
            "stratified by diagnosis; each fold scored under thresholds chosen by an inner "
            f"{cv.inner_folds}-fold cross-validation of its training patients only; "
            f"95 % intervals from {BOOTSTRAP_ROUNDS} patient bootstrap resamples"
        ),
        repeats=cv.repeats,
        folds=cv.n_folds,
        metrics=estimates.metrics,
        flagged_by_diagnosis=estimates.flagged_by_diagnosis,
    )


def rule_thresholds(
    rule: ChosenRule, targets: RuleTargets, estimates: PooledEstimates
) -> tuple[DecisionThreshold, DecisionThreshold | None]:
    """The card's two thresholds, each with its target and the out-of-sample recall reached."""
    cancer = DecisionThreshold(
        value=rule.cancer,
        method="recall",
        description=(
            f"highest threshold at which the cancer probability reaches recall >= "
            f"{targets.cancer_recall} on out-of-fold predictions"
        ),
        recall_target=targets.cancer_recall,
        recall=estimates.metrics["recall"],
    )
    if rule.melanoma is None or targets.melanoma_recall is None:
        return cancer, None
    melanoma = DecisionThreshold(
        value=rule.melanoma,
        method="recall",
        description=(
            f"highest threshold at which the melanoma probability alone reaches melanoma "
            f"recall >= {targets.melanoma_recall} on out-of-fold predictions"
        ),
        recall_target=targets.melanoma_recall,
        recall=estimates.flagged_by_diagnosis.get("MEL"),
    )
    return cancer, melanoma
