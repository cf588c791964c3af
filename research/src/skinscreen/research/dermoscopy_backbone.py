"""EfficientNet-Lite0 against a published dermoscopy network, on the split that network had.

`make dermoscopy` fits Lite0 in cached mode beside the paper's networks, because
full fine-tuning of its whole trunk is a GPU job (or an hour of CPU). This
comparison runs Lite0 alone, in either mode, without refitting the paper's
networks: it rebuilds the reference's 60/20/20 lesion-grouped split from its
card (same data fingerprint, seed and subset, or it refuses), scores the
reference's published ONNX on the validation and test parts, and reports both
side by side with the same metrics, thresholds and figures as the paper's run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from skinscreen.core.card import ModelCard, verified_model
from skinscreen.core.ham10000 import DermoscopyDataset, load_ham10000
from skinscreen.research.dermoscopy_experiments import (
    CLASSES,
    DermoscopyConfig,
    SplitModel,
    data_lines,
    data_summary,
    fit_lite0,
    network_rows,
    table_head,
    table_row,
)
from skinscreen.research.report import heading_section, plot_confusion
from skinscreen.trainer.dermoscopy_training import PAPER_THRESHOLD, Split, lesion_split
from skinscreen.trainer.evaluation import paired_auc_difference
from skinscreen.trainer.pipeline import new_run_dir, select_subset
from skinscreen.trainer.report import RocCurve, plot_roc_curves, time_section
from skinscreen.trainer.training import load_images

log = logging.getLogger(__name__)

# The reference's settings that decide the split; the comparison takes them from its card.
SPLIT_SETTINGS: Final = ("seed", "max_samples")
# The settings of DermoscopyConfig that the comparison reads (the rest are the paper networks').
LITE0_COMPARISON_OPTIONS: Final = (
    "data",
    "recall_target",
    "lite0_image_size",
    "lite0_mode",
    "lite0_views",
    "lite0_epochs",
    "lite0_learning_rate",
    "device",
)
ONNX_BATCH: Final = 64
# The two networks' names in predictions.npz, in the report's order.
_KEYS: Final = ("reference", "lite0")


@dataclass
class BackboneComparison:
    run_dir: Path
    report: dict[str, Any]


def reference_config(folder: Path) -> tuple[Path, ModelCard, DermoscopyConfig]:
    """The reference's ONNX, card and the dermoscopy configuration it was trained with."""
    model_path, card = verified_model(folder)
    if card.inputs != ("image",):
        raise ValueError(
            f"{folder} is {card.name} {card.version}, whose inputs are {list(card.inputs)}; "
            "the reference must be an image-only dermoscopy model (skinscreen-dermoscopy)"
        )
    try:
        config = DermoscopyConfig.model_validate(card.training_config)
    except ValidationError as error:
        raise ValueError(
            f"{folder}/card.json: its training_config is not a dermoscopy run's "
            f"({error.error_count()} problems); pass a version published by "
            "`skinscreen-research dermoscopy`"
        ) from None
    return model_path, card, config


def compare_backbone(
    config: DermoscopyConfig, reference: Path, runs: Path, command: str
) -> BackboneComparison:
    """Fit Lite0 as `config` says on the reference's split and report both networks."""
    started = time.perf_counter()
    model_path, card, trained_with = reference_config(reference)
    config = config.model_copy(
        update={name: getattr(trained_with, name) for name in SPLIT_SETTINGS}
    )
    dataset = select_subset(load_ham10000(config.data), config.max_samples, config.seed)
    if dataset.fingerprint() != card.data_fingerprint:
        raise ValueError(
            f"{config.data} is not the data {card.name} {card.version} was trained on "
            f"(fingerprint {dataset.fingerprint()}, its card says {card.data_fingerprint}); "
            "the split would differ, so the comparison would not be on the same test images"
        )
    run_dir = new_run_dir(runs, f"dermoscopy-lite0-{config.lite0_mode}-{config.lite0_image_size}")
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    split = lesion_split(dataset.labels, dataset.groups, config.seed)
    timings: dict[str, float] = {"load_data_s": time.perf_counter() - started}

    mark = time.perf_counter()
    models = [_score_reference(model_path, card, dataset, split)]
    timings["reference_s"] = time.perf_counter() - mark
    models.append(fit_lite0(config, dataset, split))
    timings["lite0_s"] = models[-1].seconds
    timings["total_s"] = time.perf_counter() - started

    report = {
        "command": command,
        "reference": {
            "name": card.name,
            "version": card.version,
            "sha256": card.sha256,
            "backbone": card.backbone,
            "input_size": card.input_size,
        },
        "config": json.loads(config.model_dump_json()),
        "data": data_summary(dataset, split),
        "split_networks": network_rows(config, dataset.labels, split, models),
        "lite0_minus_reference_auc": asdict(
            paired_auc_difference(
                dataset.labels[split.test],
                dataset.groups[split.test],
                models[0].test,
                models[1].test,
                seed=config.seed,
            )
        ),
        "timings_s": timings,
    }
    _plots(run_dir, dataset.labels, split, models, report["split_networks"])
    predictions: dict[str, np.ndarray] = {
        "validation_rows": split.validation,
        "test_rows": split.test,
    }
    for key, model in zip(_KEYS, models, strict=True):
        predictions[f"{key}_validation"] = model.validation
        predictions[f"{key}_test"] = model.test
    np.savez(run_dir / "predictions.npz", allow_pickle=False, **predictions)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (run_dir / "report.md").write_text(render_comparison(report))
    return BackboneComparison(run_dir, report)


def _score_reference(
    model_path: Path, card: ModelCard, dataset: DermoscopyDataset, split: Split
) -> SplitModel:
    """The published network's probabilities on the validation and test parts, via ONNX Runtime:
    the model that is served, not a refit."""
    mark = time.perf_counter()
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    parts = []
    for rows in (split.validation, split.test):
        images = load_images(dataset.subset(rows), card.input_size).numpy()
        parts.append(
            np.concatenate(
                [
                    session.run(None, {"image": images[start : start + ONNX_BATCH]})[0]
                    for start in range(0, len(images), ONNX_BATCH)
                ]
            ).astype(np.float64)
        )
    return SplitModel(
        f"{card.backbone} ({card.version}, served ONNX)",
        parts[0],
        parts[1],
        time.perf_counter() - mark,
    )


def _plots(
    run_dir: Path,
    labels: np.ndarray,
    split: Split,
    models: list[SplitModel],
    rows: list[dict[str, Any]],
) -> None:
    """Both networks' test ROC curves (Lite0 bold), and Lite0's confusion matrices."""
    test_labels = labels[split.test]
    plot_roc_curves(
        run_dir / "roc_test.png",
        [
            RocCurve(
                f"{model.name} (AUC {row['test_at_0.5']['roc_auc']:.3f})",
                test_labels,
                model.test,
                emphasised=model is models[-1],
            )
            for model, row in zip(models, rows, strict=True)
        ],
        "ROC on the test split (20 %, grouped by lesion)",
    )
    lite0 = rows[-1]
    for name, value, scores in (
        ("paper", PAPER_THRESHOLD, lite0["test_at_0.5"]),
        ("screening", lite0["screening_threshold"], lite0["test_at_screening_threshold"]),
    ):
        plot_confusion(
            run_dir / f"confusion_test_{name}.png",
            scores["confusion_matrix"],
            value,
            CLASSES,
            title=f"{lite0['name']}, test split",
        )


def render_comparison(report: dict[str, Any]) -> str:
    config, reference = report["config"], report["reference"]
    networks = report["split_networks"]
    gain = report["lite0_minus_reference_auc"]
    return "\n".join(
        [
            *heading_section(
                f"EfficientNet-Lite0 ({config['lite0_mode']}) against {reference['name']} "
                f"{reference['version']} on HAM10000",
                report["command"],
            ),
            "",
            *data_lines(report["data"]),
            "",
            f"The reference is the published {reference['backbone']} network "
            f"({reference['input_size']} px), scored through its ONNX file as it is served; "
            "the split is rebuilt from its card (seed "
            f"{config['seed']}, same data fingerprint), so both networks see the same test "
            "images. "
            f"EfficientNet-Lite0: ImageNet weights, {config['lite0_image_size']} px, "
            f"{config['lite0_mode']} mode"
            + (
                " (the whole network fine-tuned on freshly augmented photos)"
                if config["lite0_mode"] == "full"
                else f" (frozen trunk, {config['lite0_views']} augmented view(s) cached)"
            )
            + f", {config['lite0_epochs']} epochs, Adam at {config['lite0_learning_rate']} "
            "with a cosine decay, weighted loss, through the fusion trainer without "
            "clinical input; no epoch selection (the last epoch is kept).",
            "",
            "## Test split, output read at 0.5",
            "",
            *table_head(),
            *[table_row(network["name"], network["test_at_0.5"]) for network in networks],
            "",
            f"Test ROC AUC of Lite0 minus the reference's: **{gain['difference']:+.3f}**; "
            f"95 % interval over {gain['rounds']} bootstrap resamples of the test lesions "
            f"(both networks scored on each): {gain['low']:+.3f} to {gain['high']:+.3f}. "
            f"Lite0 is not better in {gain['share_not_better']:.0%} of the resamples.",
            "",
            "## Test split, at the screening threshold",
            "",
            "Each network's threshold is the highest that reaches recall "
            f"{config['recall_target']} on the validation split: "
            + "; ".join(
                f"{network['name']}: {network['screening_threshold']:.4f}" for network in networks
            )
            + ".",
            "",
            *table_head(),
            *[
                table_row(network["name"], network["test_at_screening_threshold"])
                for network in networks
            ],
            "",
            "![ROC on the test split](roc_test.png)",
            "![Lite0's confusion matrix at 0.5](confusion_test_paper.png)",
            "![Lite0's confusion matrix at its screening threshold](confusion_test_screening.png)",
            "",
            *time_section(report["timings_s"]),
            "",
        ]
    )
