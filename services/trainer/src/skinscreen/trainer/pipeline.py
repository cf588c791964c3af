"""One training run, end to end: data, nested cross-validation, final fit, ONNX, report, publish."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol, Self, TypeVar

import numpy as np
from sklearn.model_selection import train_test_split

from skinscreen.core.card import MetricSummary, ModelCard, Output, file_sha256, publish
from skinscreen.core.pad_ufes import Dataset, load_pad_ufes
from skinscreen.trainer.config import TrainConfig
from skinscreen.trainer.evaluation import (
    Threshold,
    ThresholdMethod,
    binary_metrics,
    choose_threshold,
    summarise,
)
from skinscreen.trainer.export import export_onnx, parity_rows
from skinscreen.trainer.model import save_checkpoint
from skinscreen.trainer.report import write_report
from skinscreen.trainer.training import Trainer, load_images
from skinscreen.trainer.validation import (
    ChosenRule,
    NestedCrossValidation,
    PooledEstimates,
    RuleTargets,
    choose_rule,
    nested_cross_validate,
    out_of_sample,
    pooled_estimates,
    rule_thresholds,
    screening_probabilities,
)

log = logging.getLogger(__name__)


@dataclass
class CrossValidation:
    """Out-of-fold predictions and metrics of a k-fold run."""

    labels: np.ndarray
    probabilities: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    threshold: Threshold
    per_fold: list[dict[str, Any]]
    per_fold_thresholds: list[float]
    summary: dict[str, dict[str, float]]
    pooled: dict[str, Any]


@dataclass
class RunResult:
    run_dir: Path
    config: TrainConfig
    validation: NestedCrossValidation
    rule: ChosenRule
    estimates: PooledEstimates
    card: ModelCard
    published: Path | None
    timings: dict[str, float] = field(default_factory=dict)


def make_run_dir(runs: Path, config: TrainConfig) -> Path:
    """A fresh folder named after time, model and image size."""
    return new_run_dir(runs, f"{config.backbone}-{config.image_size}")


def new_run_dir(runs: Path, name: str) -> Path:
    """A fresh folder `<runs>/<time>-<name>`, never one that exists."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = runs / f"{stamp}-{name}"
    run_dir, suffix = base, 1
    while run_dir.exists():
        suffix += 1
        run_dir = base.with_name(f"{base.name}-{suffix}")
    run_dir.mkdir(parents=True)
    return run_dir


class _Labelled(Protocol):
    def __len__(self) -> int: ...

    @property
    def labels(self) -> np.ndarray: ...

    def subset(self, indices: np.ndarray) -> Self: ...


LabelledT = TypeVar("LabelledT", bound=_Labelled)


def select_subset(dataset: LabelledT, max_samples: int | None, seed: int) -> LabelledT:
    """A label-stratified subset for quick runs; the whole set when no limit is given."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    indices, _ = train_test_split(
        np.arange(len(dataset)), train_size=max_samples, stratify=dataset.labels, random_state=seed
    )
    return dataset.subset(np.sort(indices))


def score_cross_validation(
    labels: np.ndarray,
    probabilities: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    method: ThresholdMethod,
    recall_target: float,
    beta: float,
    betas: tuple[float, ...],
) -> CrossValidation:
    """Score out-of-fold predictions, each fold at a threshold chosen on the other folds."""
    fold_of = np.zeros(len(labels), dtype=np.int64)
    for index, (_, test) in enumerate(folds):
        fold_of[test] = index

    def pick(mask: np.ndarray) -> Threshold:
        return choose_threshold(labels[mask], probabilities[mask], method, recall_target, beta)

    # Each fold is scored at a threshold chosen on the other folds' predictions,
    # so its recall is measured, not fitted.
    per_fold, per_fold_thresholds = [], []
    for index, (_, test) in enumerate(folds):
        fold_threshold = pick(fold_of != index).value
        per_fold_thresholds.append(fold_threshold)
        per_fold.append(binary_metrics(labels[test], probabilities[test], fold_threshold, betas))
    threshold = pick(np.ones(len(labels), dtype=bool))
    pooled = binary_metrics(labels, probabilities, threshold.value, betas)
    return CrossValidation(
        labels,
        probabilities,
        folds,
        threshold,
        per_fold,
        per_fold_thresholds,
        summarise(per_fold),
        pooled,
    )


def run_training(
    config: TrainConfig,
    runs: Path,
    store: Path | None,
    *,
    dataset: Dataset | None = None,
    on_epoch: Callable[[str, int, int], None] | None = None,
) -> RunResult:
    """Validate (nested, repeated), fit on all data, export, report, publish into `store`.

    `dataset` replaces PAD-UFES-20 at `config.data` (the trainer worker merges
    several sources); `on_epoch` is the `Trainer`'s per-epoch callback.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if dataset is None:
        dataset = load_pad_ufes(config.data)
    dataset = select_subset(dataset, config.max_samples, config.seed)
    log.info(
        "PAD-UFES-20: %d photos used, %d rows skipped (photo missing); %s",
        len(dataset),
        dataset.skipped_missing_image,
        dict(sorted(dataset.diagnoses.items())),
    )
    run_dir = make_run_dir(runs, config)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    images = load_images(dataset, config.image_size)
    timings["load_photos_s"] = time.perf_counter() - started

    mark = time.perf_counter()
    trainer = Trainer(config, dataset, images, progress=log.info, on_epoch=on_epoch)
    timings["cache_views_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    validation = validate(trainer, config, dataset.diagnosis_indices, dataset.groups)
    timings["nested_cross_validation_s"] = time.perf_counter() - mark
    rule = final_rule(validation, config.rule_targets)
    estimates = pooled_estimates(validation, seed=config.seed)
    save_validation(run_dir / VALIDATION_FILE, validation)
    log.info(
        "nested cross-validation: ROC AUC %.3f, recall %.3f, balanced accuracy %.3f; "
        "called suspicious by diagnosis: %s",
        estimates.metrics["roc_auc"].value,
        estimates.metrics["recall"].value,
        estimates.metrics["balanced_accuracy"].value,
        {key: round(value.value, 3) for key, value in estimates.flagged_by_diagnosis.items()},
    )

    mark = time.perf_counter()
    final = trainer.fit(np.arange(len(dataset)), seed=config.seed + config.folds, desc="final fit")
    timings["final_fit_s"] = time.perf_counter() - mark
    save_checkpoint(
        final,
        run_dir / "checkpoint.pt",
        extra={"cancer_threshold": rule.cancer, "melanoma_threshold": rule.melanoma},
    )

    mark = time.perf_counter()
    rows = parity_rows(len(dataset))
    model_path = run_dir / "model.onnx"
    parity = export_onnx(final, model_path, images[rows].numpy(), dataset.clinical[rows])
    timings["export_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - started

    card = build_card(config, dataset, validation, rule, estimates, model_path, final.output_names)
    (run_dir / "card.json").write_text(card.model_dump_json(indent=2) + "\n")
    write_report(run_dir, config, dataset, validation, rule, estimates, card, timings, parity)
    published = publish(store, model_path, card) if store is not None else None
    if published is not None:
        log.info("published %s %s at %s", card.name, card.version, published)
    return RunResult(run_dir, config, validation, rule, estimates, card, published, timings)


def validate(
    trainer: Trainer, config: TrainConfig, diagnoses: np.ndarray, groups: np.ndarray
) -> NestedCrossValidation:
    """Nested, repeated, patient-grouped cross-validation of `config`'s recipe."""
    classes_are_diagnoses = config.target == "diagnosis"

    def fit_predict(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
        model = trainer.fit(train, seed=seed, desc=f"fit on {len(train)} photos")
        return screening_probabilities(trainer.predict_classes(model, test), classes_are_diagnoses)

    return nested_cross_validate(
        fit_predict,
        diagnoses,
        groups,
        repeats=config.repeats,
        n_folds=config.folds,
        inner_folds=config.folds,
        seed=config.seed,
        targets=config.rule_targets,
        progress=log.info,
    )


VALIDATION_FILE: Final = "validation.npz"


def save_validation(path: Path, validation: NestedCrossValidation) -> None:
    """The out-of-fold predictions and each fold's rule, so that every figure of the card and
    report can be recomputed from them."""
    fold_of = np.zeros(validation.probabilities.shape[:2], dtype=np.int64)
    thresholds = np.full((validation.repeats, validation.n_folds, 2), np.nan)
    for fold in validation.folds:
        fold_of[fold.repeat, fold.test] = fold.index
        thresholds[fold.repeat, fold.index] = (
            fold.rule.cancer,
            np.nan if fold.rule.melanoma is None else fold.rule.melanoma,
        )
    np.savez_compressed(
        path,
        probabilities=validation.probabilities,
        flagged=validation.flagged,
        diagnoses=validation.diagnoses,
        groups=validation.groups,
        fold=fold_of,
        thresholds=thresholds,
    )


def final_rule(validation: NestedCrossValidation, targets: RuleTargets) -> ChosenRule:
    """The served model's thresholds: chosen, as in every outer fold, on out-of-fold
    predictions, here those of every repeat over all the data."""
    return choose_rule(
        np.tile(validation.diagnoses, validation.repeats),
        validation.probabilities.reshape(-1, 2),
        targets,
    )


def build_card(
    config: TrainConfig,
    dataset: Dataset,
    validation: NestedCrossValidation,
    rule: ChosenRule,
    estimates: PooledEstimates,
    model_path: Path,
    outputs: tuple[Output, ...],
) -> ModelCard:
    created = datetime.now(UTC)
    spec = config.model_spec()
    cancer_threshold, melanoma_threshold = rule_thresholds(rule, config.rule_targets, estimates)
    return ModelCard(
        name=config.name,
        version=created.strftime("%Y%m%d.%H%M%S"),
        created_at=created,
        sha256=file_sha256(model_path),
        input_size=config.image_size,
        backbone=config.backbone,
        clinical_share=config.clinical_share if config.use_clinical else None,
        n_image_features=spec.n_image_features,
        use_clinical=config.use_clinical,
        balancing=config.balancing,
        training_mode=config.mode,
        decision_threshold=cancer_threshold,
        melanoma_threshold=melanoma_threshold,
        outputs=outputs,
        out_of_sample=out_of_sample(validation, estimates),
        data_fingerprint=dataset.fingerprint(),
        data_description=(
            f"{dataset.description}: {len(dataset)} photos, "
            f"{len(set(dataset.groups))} patients; "
            f"{dataset.skipped_missing_image} metadata rows without a photo skipped"
        ),
        cross_validation={
            key: MetricSummary(**value)
            for key, value in summarise(validation.fold_metrics()).items()
        },
        folds=config.folds,
        training_config=json.loads(config.model_dump_json()),
    )
