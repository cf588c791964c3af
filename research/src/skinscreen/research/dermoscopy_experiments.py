"""The dermoscopy paper's experiments on HAM10000, and the image-only model they publish.

On a 60/20/20 split grouped by lesion: the paper's 3-block network, the same
network with 1 and 2 blocks (its layer sweep), and EfficientNet-Lite0 with
ImageNet weights for comparison, reported as the paper does (accuracy,
sensitivity, specificity, precision, ROC curves, confusion matrix); then a
5-fold cross-validation of the 3-block network, grouped by lesion. The
3-block network is exported with the photo as its only input and published
as `skinscreen-dermoscopy`, through the same card and store as the fusion model.

The 3-block network, its split, cross-validation, export and card are the
trainer's production recipe (`skinscreen.trainer.dermoscopy_training`); this
module adds the layer sweep, Lite0 and the paper's report around them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import numpy as np
from pydantic import Field

from skinscreen.core.card import ModelCard, publish
from skinscreen.core.clinical import N_CLINICAL
from skinscreen.core.ham10000 import DermoscopyDataset
from skinscreen.research.report import heading_section, plot_confusion, plot_roc
from skinscreen.trainer.config import TrainConfig
from skinscreen.trainer.dermoscopy_training import (
    PAPER_THRESHOLD,
    PUBLISHED_BLOCKS,
    DermoscopyTrainConfig,
    Split,
    SplitFit,
    cross_validate,
    export_served_network,
    fit_on_split,
    scores,
    screening_threshold,
    start_run,
)
from skinscreen.trainer.evaluation import Threshold
from skinscreen.trainer.pipeline import CrossValidation
from skinscreen.trainer.report import RocCurve, plot_roc_curves, time_section
from skinscreen.trainer.training import Trainer, load_images

log = logging.getLogger(__name__)

SWEEP_BLOCKS: Final = (1, 2, 3)
CLASSES: Final = ("benign", "malignant")
REPORTED = ("roc_auc", "accuracy", "recall", "specificity", "precision", "balanced_accuracy")
HEADERS: Final = {
    "roc_auc": "ROC AUC",
    "accuracy": "accuracy",
    "recall": "sensitivity",
    "specificity": "specificity",
    "precision": "precision",
    "balanced_accuracy": "balanced accuracy",
}


class DermoscopyConfig(DermoscopyTrainConfig):
    """Every knob of the dermoscopy experiments: the served network's, and Lite0's beside it."""

    lite0: bool = Field(True, description="Fit EfficientNet-Lite0 on the same split to compare.")
    lite0_image_size: Annotated[int, Field(ge=32, le=1024)] = 192
    lite0_mode: Literal["cached", "full"] = Field(
        "cached", description="As `train --mode`: cached (CPU) or full fine-tuning (GPU)."
    )
    lite0_views: Annotated[int, Field(ge=1, le=64)] = 1
    lite0_epochs: Annotated[int, Field(ge=1)] = 8
    lite0_learning_rate: Annotated[float, Field(gt=0.0)] = Field(
        1e-3, description="Adam's rate for Lite0 (full fine-tuning wants a lower one, e.g. 3e-4)."
    )

    def lite0_config(self) -> TrainConfig:
        """The fusion trainer's configuration of the Lite0 comparison: image only, two classes."""
        return TrainConfig(
            data=self.data,
            backbone="efficientnet-lite0",
            image_size=self.lite0_image_size,
            use_clinical=False,
            target="cancer",
            mode=self.lite0_mode,
            views=self.lite0_views,
            ensemble=1,
            # The photo as it is: the comparison predates test-time views.
            test_time_views=1,
            epochs=self.lite0_epochs,
            learning_rate=self.lite0_learning_rate,
            seed=self.seed,
            device=self.device,
        )


@dataclass(frozen=True)
class ImageOnlyRows:
    """HAM10000 as the fusion `Trainer` reads it: the labels, and a clinical vector it ignores."""

    labels: np.ndarray

    @property
    def clinical(self) -> np.ndarray:
        return np.zeros((len(self.labels), N_CLINICAL), dtype=np.float32)

    @property
    def diagnosis_indices(self) -> np.ndarray:
        raise ValueError("HAM10000's diagnoses are not PAD-UFES-20's: train with target 'cancer'")


@dataclass
class SplitModel:
    """One network fitted on the split's training part, with its predictions."""

    name: str
    validation: np.ndarray
    test: np.ndarray
    seconds: float
    epoch: int | None = None
    validation_auc: list[float] = field(default_factory=list)


@dataclass
class DermoscopyResult:
    run_dir: Path
    report: dict[str, Any]
    card: ModelCard
    published: Path | None


def run_dermoscopy(
    config: DermoscopyConfig, runs: Path, store: Path | None, command: str
) -> DermoscopyResult:
    """Every experiment into a new run folder under `runs`, then export and publish (if `store`).

    The folder is made once the data has loaded, so a wrong data folder leaves nothing.
    """
    started = time.perf_counter()
    run = start_run(config, runs)
    dataset, run_dir, split, timings = run.dataset, run.run_dir, run.split, run.timings
    labels = dataset.labels

    models: list[SplitModel] = []
    published_fit: SplitFit | None = None
    for blocks in SWEEP_BLOCKS:
        fit = fit_on_split(config, run, blocks)
        models.append(
            SplitModel(
                f"{blocks} block{'s' if blocks > 1 else ''}",
                fit.validation,
                fit.test,
                fit.seconds,
                fit.fit.epoch,
                fit.fit.validation_auc,
            )
        )
        timings[f"split_{blocks}_blocks_s"] = fit.seconds
        if blocks == PUBLISHED_BLOCKS:
            published_fit = fit
    assert published_fit is not None
    if config.lite0:
        models.append(fit_lite0(config, dataset, split))
        timings["split_lite0_s"] = models[-1].seconds

    mark = time.perf_counter()
    cv = cross_validate(config, run)
    timings["cross_validation_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    exported = export_served_network(config, run, published_fit, cv)
    timings["export_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - started

    card, threshold = exported.card, exported.threshold
    report = _report(
        config, command, dataset, split, models, threshold, cv, card, exported.parity, timings
    )
    _plots(run_dir, labels, split, models, threshold, cv)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (run_dir / "report.md").write_text(render_markdown(report))
    published = publish(store, exported.model_path, card) if store is not None else None
    if published is not None:
        log.info("published %s %s at %s", card.name, card.version, published)
    return DermoscopyResult(run_dir, report, card, published)


def fit_lite0(config: DermoscopyConfig, dataset: DermoscopyDataset, split: Split) -> SplitModel:
    """EfficientNet-Lite0 through the fusion trainer, image only, on the same split."""
    mark = time.perf_counter()
    lite0 = config.lite0_config()
    images = load_images(dataset, lite0.image_size)
    trainer = Trainer(lite0, ImageOnlyRows(dataset.labels), images)
    ensemble = trainer.fit(split.train, seed=config.seed, desc="EfficientNet-Lite0")
    return SplitModel(
        f"EfficientNet-Lite0 ({lite0.mode})",
        trainer.predict(ensemble, split.validation),
        trainer.predict(ensemble, split.test),
        time.perf_counter() - mark,
    )


def network_rows(
    config: DermoscopyConfig, labels: np.ndarray, split: Split, models: list[SplitModel]
) -> list[dict[str, Any]]:
    """Each network's test scores at 0.5 and at its own screening threshold (from validation)."""
    test_labels = labels[split.test]
    rows = []
    for model in models:
        screening = screening_threshold(config, labels, split, model.validation).value
        rows.append(
            {
                "name": model.name,
                "seconds": model.seconds,
                "best_epoch": model.epoch,
                "validation_auc_per_epoch": model.validation_auc,
                "test_at_0.5": scores(test_labels, model.test, PAPER_THRESHOLD),
                "screening_threshold": screening,
                "test_at_screening_threshold": scores(test_labels, model.test, screening),
            }
        )
    return rows


def data_summary(dataset: DermoscopyDataset, split: Split) -> dict[str, Any]:
    """The images, lesions, diagnoses and split sizes a report was made on."""
    labels = dataset.labels
    return {
        "images": len(dataset),
        "lesions": len(set(dataset.groups)),
        "malignant": int(labels.sum()),
        "skipped_missing_image": dataset.skipped_missing_image,
        "diagnoses": dict(sorted(dataset.diagnoses.items())),
        "fingerprint": dataset.fingerprint(),
        "split": {
            part: {"images": len(rows), "malignant": int(labels[rows].sum())}
            for part, rows in (
                ("train", split.train),
                ("validation", split.validation),
                ("test", split.test),
            )
        },
    }


def _report(
    config: DermoscopyConfig,
    command: str,
    dataset: DermoscopyDataset,
    split: Split,
    models: list[SplitModel],
    threshold: Threshold,
    cv: CrossValidation,
    card: ModelCard,
    parity: float,
    timings: dict[str, float],
) -> dict[str, Any]:
    networks = network_rows(config, dataset.labels, split, models)
    return {
        "command": command,
        "model": {"name": card.name, "version": card.version, "sha256": card.sha256},
        "config": json.loads(config.model_dump_json()),
        "data": data_summary(dataset, split),
        "threshold": {
            "value": threshold.value,
            "description": card.decision_threshold.description,
        },
        "split_networks": networks,
        "cross_validation": {
            "summary": cv.summary,
            "per_fold": cv.per_fold,
            "per_fold_thresholds": cv.per_fold_thresholds,
            "pooled_out_of_fold": cv.pooled,
        },
        "card": json.loads(card.model_dump_json()),
        "onnx_parity_max_abs_difference": parity,
        "timings_s": timings,
    }


def _plots(
    run_dir: Path,
    labels: np.ndarray,
    split: Split,
    models: list[SplitModel],
    threshold: Threshold,
    cv: CrossValidation,
) -> None:
    test_labels = labels[split.test]
    curves = [
        RocCurve(
            f"{model.name} (AUC {scores(test_labels, model.test, 0.5)['roc_auc']:.3f})",
            test_labels,
            model.test,
            emphasised=index == SWEEP_BLOCKS.index(PUBLISHED_BLOCKS),
        )
        for index, model in enumerate(models)
    ]
    plot_roc_curves(
        run_dir / "roc_test.png", curves, "ROC on the test split (20 %, grouped by lesion)"
    )
    main = models[SWEEP_BLOCKS.index(PUBLISHED_BLOCKS)]
    for name, value in (("paper", PAPER_THRESHOLD), ("screening", threshold.value)):
        plot_confusion(
            run_dir / f"confusion_test_{name}.png",
            scores(test_labels, main.test, value)["confusion_matrix"],
            value,
            CLASSES,
            title=f"{main.name}, test split",
        )
    plot_roc(
        run_dir / "roc_cross_validation.png",
        cv,
        f"ROC, {PUBLISHED_BLOCKS}-block network, folds grouped by lesion",
    )


def table_head() -> list[str]:
    """The header and rule of a table of `table_row`s."""
    return [
        "| network | " + " | ".join(HEADERS[key] for key in REPORTED) + " |",
        "|---" * (len(REPORTED) + 1) + "|",
    ]


def table_row(name: str, metrics: dict[str, Any]) -> str:
    return f"| {name} | " + " | ".join(f"{metrics[key]:.3f}" for key in REPORTED) + " |"


def data_lines(data: dict[str, Any]) -> list[str]:
    """The data and split paragraphs of a report, from its `data_summary`."""
    split = data["split"]
    return [
        f"Data: {data['images']} images of {data['lesions']} lesions, {data['malignant']} "
        "malignant (mel, bcc, akiec; benign: nv, bkl, df, vasc); "
        f"{data['skipped_missing_image']} metadata rows skipped for a missing image. "
        f"Diagnoses: {', '.join(f'{k} {v}' for k, v in data['diagnoses'].items())}.",
        "",
        f"Split grouped by lesion (no lesion on two sides), stratified: train "
        f"{split['train']['images']} ({split['train']['malignant']} malignant), validation "
        f"{split['validation']['images']} ({split['validation']['malignant']}), test "
        f"{split['test']['images']} ({split['test']['malignant']}).",
    ]


def render_markdown(report: dict[str, Any]) -> str:
    config, data = report["config"], report["data"]
    networks = report["split_networks"]
    cv = report["cross_validation"]
    lines = [
        *heading_section(
            f"The dermoscopy paper on HAM10000: {report['model']['name']} "
            f"{report['model']['version']}",
            report["command"],
        ),
        "",
        *data_lines(data),
        "",
        f"Networks: {config['image_size']}x{config['image_size']}x3 input, blocks of 3x3 "
        "convolution + ReLU + 2x2 max pooling (32, 32, 64 filters), flatten, dense 64 + ReLU, "
        f"one sigmoid output; Adam at {config['learning_rate']} with a cosine decay, "
        f"batch {config['batch_size']}, "
        f"{config['epochs']} class-balanced epochs (every malignant training image and as many "
        "benign ones, drawn afresh each epoch), rotation/shift/zoom (and flip) augmentation; "
        "the epoch with the best validation ROC AUC is kept."
        + (
            f" EfficientNet-Lite0: ImageNet weights, {config['lite0_image_size']} px, "
            f"{config['lite0_mode']} mode ({config['lite0_views']} augmented view(s) cached), "
            f"{config['lite0_epochs']} epochs, weighted loss, through the fusion trainer "
            "without clinical input."
            if config["lite0"]
            else ""
        ),
        "",
        "## Test split, sigmoid output read at 0.5 (as in the paper)",
        "",
        *table_head(),
        *[table_row(network["name"], network["test_at_0.5"]) for network in networks],
        "",
        "## Test split, at the screening threshold",
        "",
        f"Each network's threshold is the highest that reaches recall "
        f"{config['recall_target']} on the validation split; the 3-block network's, "
        f"{report['threshold']['value']:.4f}, is the published model's.",
        "",
        *table_head(),
        *[
            table_row(network["name"], network["test_at_screening_threshold"])
            for network in networks
        ],
        "",
        "Best epoch (validation ROC AUC): "
        + "; ".join(
            f"{network['name']}: {network['best_epoch']} of {config['epochs']} "
            f"({max(network['validation_auc_per_epoch']):.3f})"
            for network in networks
            if network["best_epoch"] is not None
        )
        + ".",
        "",
        "![ROC on the test split](roc_test.png)",
        "![Confusion matrix at 0.5](confusion_test_paper.png)",
        "![Confusion matrix at the screening threshold](confusion_test_screening.png)",
        "",
        f"## Cross-validation of the 3-block network ({config['folds']} folds grouped by "
        f"lesion, {config['cv_epochs']} epochs each)",
        "",
        "Each fold is scored at the threshold reaching recall "
        f"{config['recall_target']} on the other folds' predictions.",
        "",
        "| metric | mean ± std |",
        "|---|---|",
        *[
            f"| {HEADERS[key]} | {cv['summary'][key]['mean']:.3f} ± "
            f"{cv['summary'][key]['std']:.3f} |"
            for key in REPORTED
        ],
        "",
        "![ROC of the cross-validation](roc_cross_validation.png)",
        "",
        *time_section(report["timings_s"]),
        "",
        f"ONNX export (input `image` alone) checked: max |ONNX Runtime - PyTorch| = "
        f"{report['onnx_parity_max_abs_difference']:.1e}.",
        "",
    ]
    return "\n".join(lines)
