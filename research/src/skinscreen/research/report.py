"""What the papers' reports share: their heading, and the figures only they draw.

The trainer's own report (`skinscreen.trainer.report`) draws ROC curves and
writes the "Time" section; these build on it for the experiments' reports.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from skinscreen.trainer.pipeline import CrossValidation
from skinscreen.trainer.report import RocCurve, plot_roc_curves


def heading_section(title: str, command: str) -> list[str]:
    """A report's title and the command that produced it, in Markdown."""
    return [f"# {title}", "", "Produced by:", "", "```sh", command, "```"]


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
