"""The report of a run: report.json for machines, report.md for people, and plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_auc_score

from skinscreen.core.card import ModelCard
from skinscreen.core.pad_ufes import Dataset
from skinscreen.trainer.config import TrainConfig
from skinscreen.trainer.evaluation import roc_points
from skinscreen.trainer.validation import (
    ChosenRule,
    NestedCrossValidation,
    PooledEstimates,
    RuleTargets,
    pooled_metrics,
)

HEADLINE = ("roc_auc", "recall", "specificity", "balanced_accuracy", "precision")
# Other rule targets the report shows, each re-chosen inside every fold from the same
# inner predictions: how much specificity each step of recall costs.
OTHER_TARGETS: Final = (
    RuleTargets(0.95, None),
    RuleTargets(0.95, 0.95),
    RuleTargets(0.97, 0.95),
    RuleTargets(0.97, 1.0),
    RuleTargets(0.98, 0.97),
    RuleTargets(0.98, 1.0),
)


def write_report(
    run_dir: Path,
    config: TrainConfig,
    dataset: Dataset,
    validation: NestedCrossValidation,
    rule: ChosenRule,
    estimates: PooledEstimates,
    card: ModelCard,
    timings: dict[str, float],
    parity: float,
) -> None:
    cancer = validation.cancer_labels
    plot_roc_curves(
        run_dir / "roc.png",
        [
            RocCurve(
                f"repeat {repeat + 1} (AUC {roc_auc_score(cancer, probabilities[:, 0]):.3f})",
                cancer,
                probabilities[:, 0],
            )
            for repeat, probabilities in enumerate(validation.probabilities)
        ],
        "ROC, cancer vs not, out-of-fold, patient-grouped",
    )
    report = {
        "model": {"name": card.name, "version": card.version, "sha256": card.sha256},
        "config": json.loads(config.model_dump_json()),
        "data": {
            "photos": len(dataset),
            "patients": len(set(dataset.groups)),
            "skipped_missing_image": dataset.skipped_missing_image,
            "diagnoses": dict(sorted(dataset.diagnoses.items())),
            "cancer": int(dataset.labels.sum()),
            "fingerprint": card.data_fingerprint,
        },
        "rule": {
            "cancer_threshold": card.decision_threshold.model_dump(),
            "melanoma_threshold": None
            if card.melanoma_threshold is None
            else card.melanoma_threshold.model_dump(),
        },
        "out_of_sample": card.out_of_sample.model_dump() if card.out_of_sample else None,
        "other_targets": [
            {
                "cancer_recall": targets.cancer_recall,
                "melanoma_recall": targets.melanoma_recall,
                **pooled_metrics(validation, validation.flags_for(targets)),
            }
            for targets in OTHER_TARGETS
            if targets.melanoma_recall is None or config.target == "diagnosis"
        ],
        "folds": [
            {
                "repeat": fold.repeat + 1,
                "cancer_threshold": fold.rule.cancer,
                "melanoma_threshold": fold.rule.melanoma,
                **metrics,
            }
            for fold, metrics in zip(validation.folds, validation.fold_metrics(), strict=True)
        ],
        "onnx_parity_max_abs_difference": parity,
        "timings_s": timings,
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (run_dir / "report.md").write_text(render_markdown(report))


def _estimate(estimate: dict[str, Any]) -> str:
    return f"{estimate['value']:.3f} | {estimate['low']:.3f} to {estimate['high']:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    config, data, rule = report["config"], report["data"], report["rule"]
    oos = report["out_of_sample"]
    inputs = (
        f"clinical share λ = {config['clinical_share']}" if config["use_clinical"] else "image only"
    )
    cancer, melanoma = rule["cancer_threshold"], rule["melanoma_threshold"]
    rule_text = f"cancer probability ≥ {cancer['value']:.4f} ({cancer['description']})"
    if melanoma is not None:
        rule_text += (
            f", or melanoma probability ≥ {melanoma['value']:.4f} ({melanoma['description']})"
        )
    lines = [
        f"# {report['model']['name']} {report['model']['version']}",
        "",
        f"{config['backbone']} at {config['image_size']} px, {inputs}, "
        f"balancing: {config['balancing']}, mode: {config['mode']} ({config['views']} views), "
        f"{config['ensemble']} members, {config['epochs']} epochs, "
        f"{config['optimizer']} lr {config['learning_rate']} ({config['schedule']} schedule).",
        "",
        f"Data: {data['photos']} photos of {data['patients']} patients ({data['cancer']} cancers); "
        f"{data['skipped_missing_image']} metadata rows skipped for a missing photo. "
        f"Diagnoses: {', '.join(f'{k} {v}' for k, v in data['diagnoses'].items())}.",
        "",
        "## Decision rule",
        "",
        f"Suspicious (refer to a specialist) when {rule_text}. The thresholds were chosen on the "
        "out-of-fold predictions of all repeats below; the figures below come from folds "
        "scored under thresholds their own training patients chose.",
        "",
        "## What a new patient can expect",
        "",
        f"{oos['method']}.",
        "",
        "| metric | value | 95 % interval |",
        "|---|---|---|",
        *[f"| {key} | {_estimate(oos['metrics'][key])} |" for key in HEADLINE],
        "",
        "| diagnosis | photos | called suspicious | 95 % interval |",
        "|---|---|---|---|",
        *[
            f"| {diagnosis} | {estimate['n']} | {_estimate(estimate)} |"
            for diagnosis, estimate in oos["flagged_by_diagnosis"].items()
        ],
        "",
        "For a cancer (BCC, MEL, SCC) the share called suspicious is its recall; for a benign "
        "diagnosis it is the share sent to a specialist needlessly.",
        "",
        "## Other recall targets",
        "",
        "The same out-of-fold predictions, each fold's thresholds re-chosen for other targets "
        "from its own training patients:",
        "",
        "| cancer target | melanoma target | recall | melanoma recall | specificity | "
        "balanced accuracy |",
        "|---|---|---|---|---|---|",
        *[
            f"| {row['cancer_recall']} | {row['melanoma_recall'] or 'no rule'} | "
            f"{row['recall']:.3f} | {row['flagged:MEL']:.3f} | {row['specificity']:.3f} | "
            f"{row['balanced_accuracy']:.3f} |"
            for row in report["other_targets"]
        ],
        "",
        "## Folds",
        "",
        "| repeat | cancer threshold | melanoma threshold | "
        + " | ".join(HEADLINE)
        + " | melanoma recall |",
        "|---" * (len(HEADLINE) + 4) + "|",
        *[
            f"| {fold['repeat']} | {fold['cancer_threshold']:.4f} | "
            + ("-" if fold["melanoma_threshold"] is None else f"{fold['melanoma_threshold']:.4f}")
            + " | "
            + " | ".join(f"{fold[key]:.3f}" for key in (*HEADLINE, "melanoma_recall"))
            + " |"
            for fold in report["folds"]
        ],
        "",
        "![ROC curves](roc.png)",
        "",
        *time_section(report["timings_s"]),
        "",
        f"ONNX export checked: max |ONNX Runtime - PyTorch| = "
        f"{report['onnx_parity_max_abs_difference']:.1e}.",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class RocCurve:
    label: str
    labels: np.ndarray
    probabilities: np.ndarray
    emphasised: bool = False


def plot_roc_curves(path: Path, curves: list[RocCurve], title: str) -> None:
    """ROC curves in one figure; an emphasised curve is drawn bold and black."""
    figure, axes = plt.subplots(figsize=(5.5, 5))
    for curve in curves:
        fpr, tpr = roc_points(curve.labels, curve.probabilities)
        if curve.emphasised:
            axes.plot(fpr, tpr, color="black", lw=2, label=curve.label)
        else:
            axes.plot(fpr, tpr, lw=1, alpha=0.7, label=curve.label)
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    axes.set(xlabel="1 - specificity", ylabel="recall (sensitivity)", title=title)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def time_section(timings_s: dict[str, float]) -> list[str]:
    """A report's "Time" section in Markdown: one line per timed part, e.g. `- total: 824 s`."""
    return [
        "## Time",
        "",
        *[
            f"- {key.removesuffix('_s').replace('_', ' ')}: {value:.0f} s"
            for key, value in timings_s.items()
        ],
    ]
