"""The served image-only model, `skinscreen-dermoscopy`: one training run, end to end.

The dermoscopy paper's 3-block network on HAM10000: a 60/20/20 split grouped
by lesion (the epoch and the screening threshold chosen on the validation
part, the network scored on the held-out test part), a cross-validation
grouped by lesion for the card, export with the photo as the only input,
and the card and model published into a store. The paper's other
experiments (its layer sweep, EfficientNet-Lite0 beside it, the report) are
in `skinscreen.research`, which builds on these pieces.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from skinscreen.core.card import DecisionThreshold, MetricSummary, ModelCard, file_sha256, publish
from skinscreen.core.ham10000 import DermoscopyDataset, load_ham10000
from skinscreen.runtime.training_runs import DERMOSCOPY_MODEL_NAME
from skinscreen.trainer.dermoscopy import (
    DENSE_UNITS,
    DermoscopyNetwork,
    FitResult,
    NetworkSpec,
    fit_network,
    predict,
    save_checkpoint,
)
from skinscreen.trainer.evaluation import Threshold, binary_metrics, choose_threshold, patient_folds
from skinscreen.trainer.export import export_image_only_onnx, parity_rows
from skinscreen.trainer.pipeline import (
    CrossValidation,
    new_run_dir,
    score_cross_validation,
    select_subset,
)
from skinscreen.trainer.training import load_images, resolve_device

log = logging.getLogger(__name__)

PUBLISHED_BLOCKS: Final = 3
# A sigmoid output read at 0.5, as the paper reports it; training on balanced
# epochs puts 0.5 where the two classes weigh the same.
PAPER_THRESHOLD: Final = 0.5

OnEpoch = Callable[[str, int, int], None]


class DermoscopyTrainConfig(BaseModel):
    """Every knob of the served dermoscopy network's run; defaults are the published model's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path = Field(description="HAM10000 folder holding HAM10000_metadata.csv and images/.")
    name: str = Field(
        DERMOSCOPY_MODEL_NAME,
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="Model name in the store.",
    )
    image_size: Annotated[int, Field(ge=32, le=512)] = Field(
        150, description="Input side S of the paper's network (150 in the paper)."
    )
    epochs: Annotated[int, Field(ge=1)] = Field(
        30, description="Class-balanced epochs of each network on the 60/20/20 split."
    )
    cv_epochs: Annotated[int, Field(ge=1)] = Field(
        10, description="Class-balanced epochs of the 3-block network in each fold of the CV."
    )
    batch_size: Annotated[int, Field(ge=2)] = 32
    learning_rate: Annotated[float, Field(gt=0.0)] = Field(1e-3, description="Adam's rate.")
    folds: Annotated[int, Field(ge=2)] = 5
    seed: int = 0
    recall_target: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.95, description="The served threshold is the highest reaching it on validation."
    )
    max_samples: Annotated[int | None, Field(ge=50)] = Field(
        None, description="Use a stratified subset of this many images (smoke runs)."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def lesion_split(labels: np.ndarray, groups: np.ndarray, seed: int) -> Split:
    """60/20/20, stratified by label, every lesion's images on one side.

    Two of five grouped folds are the test and validation parts; the other three train.
    """
    folds = patient_folds(labels, groups, 5, seed)
    test, validation = folds[0][1], folds[1][1]
    train = np.setdiff1d(np.arange(len(labels)), np.concatenate([test, validation]))
    return Split(train, validation, test)


def load_data(config: DermoscopyTrainConfig) -> DermoscopyDataset:
    """HAM10000 at `config.data`, the subset `config` asks for; logs what it holds."""
    dataset = select_subset(load_ham10000(config.data), config.max_samples, config.seed)
    log.info(
        "HAM10000: %d images, %d rows skipped (image missing); %s",
        len(dataset),
        dataset.skipped_missing_image,
        dict(sorted(dataset.diagnoses.items())),
    )
    return dataset


@dataclass
class StartedRun:
    """A dermoscopy run's folder (config.json written), its images, split and device."""

    dataset: DermoscopyDataset
    run_dir: Path
    images: torch.Tensor
    split: Split
    device: torch.device
    timings: dict[str, float]

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels


def start_run(config: DermoscopyTrainConfig, runs: Path) -> StartedRun:
    """Load the data, then make the run folder: a wrong data folder leaves nothing."""
    started = time.perf_counter()
    dataset = load_data(config)
    run_dir = new_run_dir(runs, f"dermoscopy-{config.image_size}")
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    images = load_images(dataset, config.image_size)
    timings = {"load_images_s": time.perf_counter() - started}
    split = lesion_split(dataset.labels, dataset.groups, config.seed)
    return StartedRun(dataset, run_dir, images, split, resolve_device(config.device), timings)


@dataclass
class SplitFit:
    """A network fitted on the split's training part, and its predictions on the other two."""

    fit: FitResult
    validation: np.ndarray
    test: np.ndarray
    seconds: float


def fit_on_split(
    config: DermoscopyTrainConfig, run: StartedRun, blocks: int, on_epoch: OnEpoch | None = None
) -> SplitFit:
    """A `blocks`-block network on the training part, the best validation epoch kept."""
    mark = time.perf_counter()
    images, split, device = run.images, run.split, run.device
    fit = fit_network(
        NetworkSpec(blocks=blocks, image_size=config.image_size),
        images,
        run.labels,
        split.train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        device=device,
        desc=f"{blocks}-block network",
        validation=split.validation,
        on_epoch=on_epoch,
    )
    return SplitFit(
        fit,
        predict(fit.model, images, split.validation, device),
        predict(fit.model, images, split.test, device),
        time.perf_counter() - mark,
    )


def cross_validate(
    config: DermoscopyTrainConfig, run: StartedRun, on_epoch: OnEpoch | None = None
) -> CrossValidation:
    """The 3-block network in k folds grouped by lesion, each scored at the others' threshold."""
    images, labels, device = run.images, run.labels, run.device
    folds = patient_folds(labels, run.dataset.groups, config.folds, config.seed)
    probabilities = np.zeros(len(labels), dtype=np.float64)
    for index, (train, test) in enumerate(folds):
        fit = fit_network(
            NetworkSpec(blocks=PUBLISHED_BLOCKS, image_size=config.image_size),
            images,
            labels,
            train,
            epochs=config.cv_epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            seed=config.seed + index,
            device=device,
            desc=f"fold {index + 1}/{len(folds)}",
            on_epoch=on_epoch,
        )
        probabilities[test] = predict(fit.model, images, test, device)
    return score_cross_validation(
        labels, probabilities, folds, "recall", config.recall_target, 1.0, (1.0,)
    )


def screening_threshold(
    config: DermoscopyTrainConfig, labels: np.ndarray, split: Split, validation: np.ndarray
) -> Threshold:
    """The highest threshold at which a network's validation predictions reach the target."""
    return choose_threshold(labels[split.validation], validation, "recall", config.recall_target)


def scores(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, Any]:
    return binary_metrics(labels, probabilities, threshold, (1.0,))


@dataclass
class Exported:
    """The served network as published: its file, threshold, card and ONNX parity."""

    model_path: Path
    threshold: Threshold
    card: ModelCard
    parity: float


def export_served_network(
    config: DermoscopyTrainConfig, run: StartedRun, network: SplitFit, cv: CrossValidation
) -> Exported:
    """Export the network with the photo as its only input, its checkpoint and its card.

    `config` is written into the card as its training configuration (a research run's
    whole configuration, when one made the network)."""
    dataset, images, split, run_dir = run.dataset, run.images, run.split, run.run_dir
    threshold = screening_threshold(config, dataset.labels, split, network.validation)
    model_path = run_dir / "model.onnx"
    rows = split.test[parity_rows(len(split.test))]
    model: DermoscopyNetwork = network.fit.model
    parity = export_image_only_onnx(
        model, model_path, images[torch.from_numpy(rows)].numpy(), config.image_size
    )
    save_checkpoint(model, run_dir / "checkpoint.pt", {"threshold": threshold.value})
    card = build_card(config, dataset, split, threshold, cv, model_path)
    (run_dir / "card.json").write_text(card.model_dump_json(indent=2) + "\n")
    return Exported(model_path, threshold, card, parity)


def build_card(
    config: DermoscopyTrainConfig,
    dataset: DermoscopyDataset,
    split: Split,
    threshold: Threshold,
    cv: CrossValidation,
    model_path: Path,
) -> ModelCard:
    created = datetime.now(UTC)
    labels = dataset.labels
    return ModelCard(
        name=config.name,
        version=created.strftime("%Y%m%d.%H%M%S"),
        created_at=created,
        sha256=file_sha256(model_path),
        input_size=config.image_size,
        backbone=f"dermoscopy-cnn-{PUBLISHED_BLOCKS}-blocks",
        clinical_share=None,
        n_image_features=DENSE_UNITS,
        use_clinical=False,
        balancing="balanced-epochs",
        training_mode="full",
        decision_threshold=DecisionThreshold(
            value=threshold.value,
            method=threshold.method,
            description=f"highest threshold reaching recall >= {config.recall_target} on the "
            "validation split (20 %, grouped by lesion)",
        ),
        data_fingerprint=dataset.fingerprint(),
        data_description=(
            f"HAM10000 at {config.data}: {len(dataset)} images of "
            f"{len(set(dataset.groups))} lesions, {int(labels.sum())} malignant (mel, bcc, "
            f"akiec); trained on {len(split.train)} (60 %), best epoch and threshold chosen on "
            f"{len(split.validation)} (20 %), tested on {len(split.test)} (20 %), grouped by "
            f"lesion; cross-validation: {config.folds} folds grouped by lesion, "
            f"{config.cv_epochs} epochs each; {dataset.skipped_missing_image} metadata rows "
            "without an image skipped"
        ),
        cross_validation={key: MetricSummary(**value) for key, value in cv.summary.items()},
        folds=config.folds,
        training_config=json.loads(config.model_dump_json()),
        inputs=("image",),
    )


@dataclass
class DermoscopyRun:
    run_dir: Path
    card: ModelCard
    published: Path | None
    # The served network on the held-out test part, at 0.5 and at its screening threshold.
    test: dict[str, dict[str, Any]]
    timings: dict[str, float]


def run_dermoscopy_training(
    config: DermoscopyTrainConfig,
    runs: Path,
    store: Path | None,
    *,
    on_epoch: OnEpoch | None = None,
) -> DermoscopyRun:
    """Fit, evaluate, cross-validate, export and publish (into `store`, if given) the
    served network; the run folder holds config, report.json, checkpoint, model and card.

    The folder is made once the data has loaded, so a wrong data folder leaves nothing.
    """
    started = time.perf_counter()
    run = start_run(config, runs)
    timings, split = run.timings, run.split

    network = fit_on_split(config, run, PUBLISHED_BLOCKS, on_epoch)
    timings["split_s"] = network.seconds
    mark = time.perf_counter()
    cv = cross_validate(config, run, on_epoch)
    timings["cross_validation_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    exported = export_served_network(config, run, network, cv)
    timings["export_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - started

    test_labels = run.labels[split.test]
    test = {
        "at_0.5": scores(test_labels, network.test, PAPER_THRESHOLD),
        "at_screening_threshold": scores(test_labels, network.test, exported.threshold.value),
    }
    report = {
        "model": {"name": exported.card.name, "version": exported.card.version},
        "config": json.loads(config.model_dump_json()),
        "split": {part: len(getattr(split, part)) for part in ("train", "validation", "test")},
        "best_epoch": network.fit.epoch,
        "validation_auc_per_epoch": network.fit.validation_auc,
        "threshold": exported.threshold.value,
        "test": test,
        "cross_validation": cv.summary,
        "onnx_parity_max_abs_difference": exported.parity,
        "timings_s": timings,
    }
    (run.run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    published = publish(store, exported.model_path, exported.card) if store is not None else None
    if published is not None:
        log.info("published %s %s at %s", exported.card.name, exported.card.version, published)
    return DermoscopyRun(run.run_dir, exported.card, published, test, timings)
