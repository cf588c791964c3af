"""Honest evaluation: patient-grouped folds, metrics, and the choice of the decision threshold.

Metrics come from scikit-learn. The threshold is chosen on out-of-fold
predictions; when reporting a fold, it is chosen on the other folds only, so
the reported recall is not the recall the threshold was fitted to.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    fbeta_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.model_selection import StratifiedGroupKFold

ThresholdMethod = Literal["recall", "fbeta"]


def patient_folds(
    labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds in which every patient's photos stay together."""
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise ValueError(
            f"{n_folds} folds need at least {n_folds} patients; the data has {n_groups}"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(train, test) for train, test in splitter.split(np.zeros(len(labels)), labels, groups)]


def binary_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, betas: tuple[float, ...]
) -> dict[str, float | list[list[int]]]:
    """Cancer-vs-not metrics at `threshold` (probability >= threshold means suspicious)."""
    return flag_metrics(labels, probabilities, probabilities >= threshold, betas)


def flag_metrics(
    labels: np.ndarray, probabilities: np.ndarray, flagged: np.ndarray, betas: tuple[float, ...]
) -> dict[str, float | list[list[int]]]:
    """Cancer-vs-not metrics of suspicious calls `flagged` (from any rule); ROC AUC from the
    cancer `probabilities`."""
    predicted = flagged.astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    metrics: dict[str, float | list[list[int]]] = {
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if tn + fp else 0.0,
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "roc_auc": float(roc_auc_score(labels, probabilities))
        if len(set(labels)) == 2
        else float("nan"),
    }
    for beta in betas:
        metrics[f"f{_beta_name(beta)}"] = float(
            fbeta_score(labels, predicted, beta=beta, zero_division=0)
        )
    metrics["confusion_matrix"] = [[int(tn), int(fp)], [int(fn), int(tp)]]
    return metrics


def _beta_name(beta: float) -> str:
    return str(int(beta)) if float(beta).is_integer() else str(beta).replace(".", "_")


@dataclass(frozen=True)
class Threshold:
    value: float
    method: str
    description: str


def choose_threshold(
    labels: np.ndarray,
    probabilities: np.ndarray,
    method: ThresholdMethod,
    recall_target: float = 0.95,
    beta: float = 1.0,
) -> Threshold:
    """The decision threshold: the highest one that reaches the recall target, or the F-beta best.

    For a recall target this is the probability of the k-th most suspicious
    cancer, k = ceil(target * cancers): every lower threshold flags more
    benign lesions for no recall gained.
    """
    positives = np.sort(probabilities[labels == 1])[::-1]
    if len(positives) == 0:
        raise ValueError("cannot choose a threshold without any cancer among the labels")
    if method == "recall":
        if not 0.0 < recall_target <= 1.0:
            raise ValueError(f"recall_target must lie in (0, 1], got {recall_target}")
        k = max(1, math.ceil(recall_target * len(positives)))
        value = float(positives[k - 1])
        return Threshold(
            value,
            "recall",
            f"highest threshold reaching recall >= {recall_target} on out-of-fold predictions",
        )
    if method == "fbeta":
        candidates = np.unique(probabilities)
        value = float(candidates[int(np.argmax(fbeta_at(labels, probabilities, candidates, beta)))])
        return Threshold(
            value, "fbeta", f"threshold maximising F{_beta_name(beta)} on out-of-fold predictions"
        )
    raise ValueError(f"unknown threshold method {method!r}; choose 'recall' or 'fbeta'")


def fbeta_at(
    labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray, beta: float
) -> np.ndarray:
    """F-beta of `probabilities >= t` for every threshold t, from counts, in one pass.

    The arithmetic of scikit-learn's `fbeta_score`, (1 + b^2) TP / (b^2 P + predicted P),
    so the same scores; one `fbeta_score` call per candidate took seconds per choice
    on a thousand predictions.
    """
    positives = np.sort(probabilities[labels == 1])
    negatives = np.sort(probabilities[labels == 0])
    true_positives = len(positives) - np.searchsorted(positives, thresholds, side="left")
    predicted = (
        true_positives + len(negatives) - np.searchsorted(negatives, thresholds, side="left")
    )
    beta2 = beta**2
    denominator = beta2 * float(len(positives)) + predicted.astype(np.float64)
    scores = np.zeros(len(thresholds), dtype=np.float64)
    np.divide(
        (1 + beta2) * true_positives.astype(np.float64),
        denominator,
        out=scores,
        where=denominator > 0,
    )
    return scores


def summarise(
    per_fold: Sequence[Mapping[str, float | list[list[int]]]],
) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of every scalar metric across the folds that have it.

    A fold without a class has no value for its metrics (NaN: no melanoma, no recall of
    melanoma); such folds are left out, and a metric no fold has is left out entirely.
    """
    summary: dict[str, dict[str, float]] = {}
    for key, value in per_fold[0].items():
        if isinstance(value, list):
            continue
        values = np.array([fold[key] for fold in per_fold], dtype=np.float64)
        values = values[~np.isnan(values)]
        if len(values):
            summary[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=0))}
    return summary


def roc_points(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, probabilities)
    return false_positive_rate, true_positive_rate


def group_bootstrap_weights(
    labels: np.ndarray, groups: np.ndarray, rounds: int, seed: int
) -> Iterator[np.ndarray]:
    """`rounds` bootstrap resamples of whole groups (patients, lesions), drawn with
    replacement, each as row weights: how often the row's group was drawn. A resample
    holding one class only has no AUC or recall and is drawn again."""
    unique, row_group = np.unique(groups, return_inverse=True)
    generator = np.random.default_rng(seed)
    made = 0
    while made < rounds:
        weights = np.bincount(
            generator.integers(0, len(unique), len(unique)), minlength=len(unique)
        )[row_group]
        drawn = labels[weights > 0]
        if drawn.min() == drawn.max():
            continue
        made += 1
        yield weights


@dataclass(frozen=True)
class PairedAucDifference:
    """ROC AUC of `b` minus that of `a` on the same rows, with a bootstrap interval."""

    difference: float
    low: float
    high: float
    share_not_better: float
    rounds: int


def paired_auc_difference(
    labels: np.ndarray,
    groups: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    rounds: int = 2000,
    seed: int = 0,
) -> PairedAucDifference:
    """AUC(b) - AUC(a), and its 95 % percentile interval over `rounds` resamples of the groups.

    Both models are scored on each resample, so what they share (the same hard images) cancels;
    whole groups (lesions, patients) are drawn, since their images are not independent. A
    resample with one class only has no AUC and is drawn again. `share_not_better` is the share
    of resamples in which b does not beat a.
    """
    spread = np.array(
        [
            roc_auc_score(labels, b, sample_weight=weights)
            - roc_auc_score(labels, a, sample_weight=weights)
            for weights in group_bootstrap_weights(labels, groups, rounds, seed)
        ]
    )
    return PairedAucDifference(
        difference=float(roc_auc_score(labels, b) - roc_auc_score(labels, a)),
        low=float(np.percentile(spread, 2.5)),
        high=float(np.percentile(spread, 97.5)),
        share_not_better=float((spread <= 0).mean()),
        rounds=rounds,
    )
