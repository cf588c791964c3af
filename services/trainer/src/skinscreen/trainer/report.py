"""The report of a run: report.json for machines, report.md for people, and plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from skinscreen.core.card import ModelCard
from skinscreen.core.pad_ufes import Dataset
from skinscreen.trainer.config import TrainConfig
from skinscreen.trainer.evaluation import roc_points

if TYPE_CHECKING:
    from skinscreen.trainer.pipeline import CrossValidation

HEADLINE = ("roc_auc", "recall", "specificity", "balanced_accuracy", "precision", "accuracy")


def write_report(
    run_dir: Path,
    config: TrainConfig,
    dataset: Dataset,
    cv: CrossValidation,
    card: ModelCard,
    timings: dict[str, float],
    parity: float,
) -> None:
    plot_roc(run_dir / "roc.png", cv)
    plot_confusion(
        run_dir / "confusion_matrix.png", cv.pooled["confusion_matrix"], cv.threshold.value
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
        "threshold": {
            "value": cv.threshold.value,
            "method": cv.threshold.method,
            "description": cv.threshold.description,
            "per_fold_from_other_folds": cv.per_fold_thresholds,
        },
        "cross_validation": {
            "summary": cv.summary,
            "per_fold": cv.per_fold,
            "pooled_out_of_fold": cv.pooled,
        },
        "onnx_parity_max_abs_difference": parity,
        "timings_s": timings,
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (run_dir / "report.md").write_text(render_markdown(report))


def _mean_std(summary: dict[str, dict[str, float]], key: str) -> str:
    return f"{summary[key]['mean']:.3f} ± {summary[key]['std']:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    cv = report["cross_validation"]
    summary, per_fold = cv["summary"], cv["per_fold"]
    config, data, threshold = report["config"], report["data"], report["threshold"]
    metric_keys = [key for key in summary if key not in HEADLINE]
    inputs = (
        f"clinical share λ = {config['clinical_share']}" if config["use_clinical"] else "image only"
    )
    lines = [
        f"# {report['model']['name']} {report['model']['version']}",
        "",
        f"{config['backbone']} at {config['image_size']} px, "
        f"{inputs}, "
        f"balancing: {config['balancing']}, mode: {config['mode']}, {config['epochs']} epochs, "
        f"{config['optimizer']} lr {config['learning_rate']} ({config['schedule']} schedule).",
        "",
        f"Data: {data['photos']} photos of {data['patients']} patients ({data['cancer']} cancers); "
        f"{data['skipped_missing_image']} metadata rows skipped for a missing photo. "
        f"Diagnoses: {', '.join(f'{k} {v}' for k, v in data['diagnoses'].items())}.",
        "",
        f"## Cross-validation ({config['folds']} folds, grouped by patient)",
        "",
        f"Decision threshold {threshold['value']:.4f}: {threshold['description']}. "
        "Each fold below is scored at a threshold chosen on the other folds' predictions.",
        "",
        "| metric | mean ± std |",
        "|---|---|",
        *[f"| {key} | {_mean_std(summary, key)} |" for key in HEADLINE + tuple(metric_keys)],
        "",
        "| fold | " + " | ".join(HEADLINE) + " | threshold | confusion [[TN, FP], [FN, TP]] |",
        "|---" * (len(HEADLINE) + 3) + "|",
    ]
    for index, fold in enumerate(per_fold):
        values = " | ".join(f"{fold[key]:.3f}" for key in HEADLINE)
        lines.append(
            f"| {index + 1} | {values} | "
            f"{threshold['per_fold_from_other_folds'][index]:.4f} | "
            f"{fold['confusion_matrix']} |"
        )
    pooled = cv["pooled_out_of_fold"]
    lines += [
        "",
        f"Pooled out-of-fold predictions at the final threshold: ROC AUC {pooled['roc_auc']:.3f}, "
        f"recall {pooled['recall']:.3f}, specificity {pooled['specificity']:.3f}, "
        f"balanced accuracy {pooled['balanced_accuracy']:.3f}, precision "
        f"{pooled['precision']:.3f}; confusion {pooled['confusion_matrix']}.",
        "",
        "![ROC curves](roc.png) ![Confusion matrix](confusion_matrix.png)",
        "",
        "## Time",
        "",
        *[
            f"- {key.removesuffix('_s').replace('_', ' ')}: {value:.0f} s"
            for key, value in report["timings_s"].items()
        ],
        "",
        f"ONNX export checked: max |ONNX Runtime - PyTorch| = "
        f"{report['onnx_parity_max_abs_difference']:.1e}.",
        "",
    ]
    return "\n".join(lines)


def plot_roc(
    path: Path, cv: CrossValidation, title: str = "ROC, cancer vs not, patient-grouped folds"
) -> None:
    curves = [
        RocCurve(
            f"fold {index + 1} (AUC {cv.per_fold[index]['roc_auc']:.3f})",
            cv.labels[test],
            cv.probabilities[test],
        )
        for index, (_, test) in enumerate(cv.folds)
    ]
    curves.append(
        RocCurve(
            f"pooled out-of-fold (AUC {cv.pooled['roc_auc']:.3f})",
            cv.labels,
            cv.probabilities,
            emphasised=True,
        )
    )
    plot_roc_curves(path, curves, title)


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


def plot_confusion(
    path: Path,
    matrix: list[list[int]],
    threshold: float,
    classes: tuple[str, str] = ("not cancer", "cancer"),
    title: str = "Out-of-fold",
) -> None:
    figure, axes = plt.subplots(figsize=(4.5, 4))
    values = np.array(matrix)
    axes.imshow(values, cmap="Blues")
    for row in range(2):
        for column in range(2):
            axes.text(
                column,
                row,
                str(values[row, column]),
                ha="center",
                va="center",
                color="white" if values[row, column] > values.max() / 2 else "black",
            )
    axes.set_xticks([0, 1], list(classes))
    axes.set_yticks([0, 1], list(classes))
    axes.set(xlabel="predicted", ylabel="diagnosed", title=f"{title}, threshold {threshold:.3f}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_embedding(path: Path, points: np.ndarray, labels: np.ndarray, title: str) -> None:
    """A 2-D embedding (t-SNE) [N, 2] of photos' features, coloured by cancer or not."""
    figure, axes = plt.subplots(figsize=(5.5, 5))
    classes = ("not cancer", "cancer")
    for label, (name, colour) in enumerate(zip(classes, ("tab:blue", "tab:red"), strict=True)):
        chosen = labels == label
        axes.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=8,
            alpha=0.7,
            color=colour,
            label=f"{name} ({int(chosen.sum())})",
        )
    axes.set(title=title, xticks=[], yticks=[])
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def heading_section(title: str, command: str) -> list[str]:
    """A report's title and the command that produced it, in Markdown."""
    return [f"# {title}", "", "Produced by:", "", "```sh", command, "```"]


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
