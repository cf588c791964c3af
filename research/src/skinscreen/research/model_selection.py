"""Which fusion recipe to ship: candidates against the shipped recipe, paired on the same folds.

Every recipe goes through the trainer's own nested, repeated, patient-grouped
validation (`skinscreen.trainer.pipeline.validate`) with the same seed, so the
same outer folds, and each fold's thresholds chosen inside its own training
patients for the same recall targets. Recipes are compared with the paired
patient bootstrap of the ROC AUC difference, and by what their decision rules
catch and spare out of sample. The recipe `make train` ships is not run again:
its run folder's validation.npz holds the same kind of predictions.

    skinscreen-research model-selection --data ../shared/data/pad-ufes-20 \
        --out docs/default-model/selection --trained runs/<make train run folder>

A recipe whose predictions are already in --out is not run again. Pen ink: the
trained recipe is refitted on the five outer folds of the first repeat, and
each fold's photos with pen ink are scored as they are and with the ink
painted out. Part of skinscreen-research, which no service installs: it reads the
trainer's public API.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from skinscreen.core.pad_ufes import Dataset, load_pad_ufes
from skinscreen.trainer.config import TrainConfig
from skinscreen.trainer.evaluation import paired_auc_difference
from skinscreen.trainer.pipeline import VALIDATION_FILE, save_validation, validate
from skinscreen.trainer.training import Trainer, load_images
from skinscreen.trainer.validation import (
    CANCER,
    CANCER_MASK,
    SavedOutOfFold,
    grouped_folds,
    pooled_estimates,
    screening_probabilities,
)

TRAINED = "trained"
# The shipped skinscreen-fusion 20261122.041231 was made with TrainConfig's defaults of its
# day: EfficientNet-Lite0, the last 1x1 convolution trained on cached trunk maps, clinical
# share 0.3, 3 members, no test-time views. The rule targets are today's for every recipe.
RECIPES: dict[str, dict[str, Any]] = {
    # One repeat: training its last 1x1 convolution makes each fit ten times slower; its
    # outer folds are the first repeat's of every other recipe, so the comparison is paired.
    "shipped-recipe": {
        "mode": "cached",
        "clinical_share": 0.3,
        "ensemble": 3,
        "test_time_views": 1,
        "repeats": 1,
    },
    # The trained recipe scoring the photo as it is: what the test-time views are worth.
    "no-test-time-views": {"test_time_views": 1},
    "lite2-260": {"backbone": "efficientnet-lite2", "image_size": 260},
}
HEADLINE = ("roc_auc", "recall", "specificity", "balanced_accuracy")


def run_recipe(name: str, dataset: Dataset, data: Path, out: Path) -> None:
    path = out / f"{name}.npz"
    if path.exists():
        return
    started = time.perf_counter()
    config = TrainConfig.model_validate({"data": data, **RECIPES[name]})
    trainer = Trainer(config, dataset, load_images(dataset, config.image_size))
    save_validation(path, validate(trainer, config, dataset.diagnosis_indices, dataset.groups))
    (out / f"{name}.json").write_text(
        json.dumps({"config": RECIPES[name], "seconds": time.perf_counter() - started}, indent=2)
        + "\n"
    )
    logging.info("%s: %.0f s", name, time.perf_counter() - started)


def pen_ink(dataset: Dataset, trained: Path) -> dict[str, Any]:
    """The trained recipe's answers on inked photos, as they are and with the ink painted
    out, each from the outer model of repeat 1 that did not see the photo."""
    config = TrainConfig.model_validate_json((trained / "config.json").read_text())
    trainer = Trainer(config, dataset, load_images(dataset, config.image_size))
    painted = trainer.use_ink_painted_out()
    inked = trainer.inked
    as_is = np.full(len(dataset), np.nan)
    painted_out = np.full(len(dataset), np.nan)
    folds = grouped_folds(dataset.diagnosis_indices, dataset.groups, config.folds, config.seed)
    for index, (train, test) in enumerate(folds):
        rows = test[inked[test]]
        model = trainer.fit(train, seed=config.seed + index, desc=f"pen ink fold {index + 1}")
        as_is[rows] = screening_probabilities(trainer.predict_classes(model, rows), True)[:, CANCER]
        painted_out[rows] = screening_probabilities(painted.predict_classes(model, rows), True)[
            :, CANCER
        ]
    cancer = CANCER_MASK[dataset.diagnosis_indices][inked]
    before, after = as_is[inked], painted_out[inked]
    return {
        "inked_photos": int(inked.sum()),
        "inked_cancers": int(cancer.sum()),
        "mean_abs_change": float(np.abs(after - before).mean()),
        "max_abs_change": float(np.abs(after - before).max()),
        "cancers_mean": [float(before[cancer].mean()), float(after[cancer].mean())],
        "benign_mean": [float(before[~cancer].mean()), float(after[~cancer].mean())],
        "roc_auc_inked": [
            float(roc_auc_score(cancer, before)),
            float(roc_auc_score(cancer, after)),
        ],
    }


def summarise(out: Path, trained: Path, groups: np.ndarray) -> dict[str, Any]:
    runs = {TRAINED: SavedOutOfFold.load(trained / VALIDATION_FILE)}
    details = {TRAINED: {"config": json.loads((trained / "config.json").read_text())}}
    for name in RECIPES:
        if (out / f"{name}.npz").exists():
            runs[name] = SavedOutOfFold.load(out / f"{name}.npz")
            details[name] = json.loads((out / f"{name}.json").read_text())
    baseline = runs["shipped-recipe"]
    labels = CANCER_MASK[baseline.diagnoses].astype(np.int64)
    report: dict[str, Any] = {"recipes": {}}
    for name, saved in runs.items():
        estimates = pooled_estimates(saved)
        entry: dict[str, Any] = {
            **details[name],
            "metrics": {key: estimates.metrics[key].model_dump() for key in HEADLINE},
            "flagged_by_diagnosis": {
                key: value.model_dump() for key, value in estimates.flagged_by_diagnosis.items()
            },
        }
        if name != "shipped-recipe":
            # On the repeats both have: the same outer folds, the same photos.
            repeats = min(len(baseline.probabilities), len(saved.probabilities))
            difference = paired_auc_difference(
                np.tile(labels, repeats),
                np.tile(groups, repeats),
                baseline.probabilities[:repeats, :, CANCER].reshape(-1),
                saved.probabilities[:repeats, :, CANCER].reshape(-1),
            )
            entry["auc_difference_vs_shipped_recipe"] = {
                "difference": difference.difference,
                "low": difference.low,
                "high": difference.high,
                "share_not_better": difference.share_not_better,
            }
        report["recipes"][name] = entry
    return report


def _estimate(value: dict[str, float]) -> str:
    return f"{value['value']:.3f} ({value['low']:.3f}-{value['high']:.3f})"


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Choosing the fusion recipe",
        "",
        "Produced by `research/model_selection.py` (its docstring gives the command). Every "
        "recipe: 3 x 5-fold cross-validation grouped by patient (the shipped recipe: the first "
        "repeat only, ten times slower per fit), the same folds for all; each "
        "fold's thresholds chosen by an inner 5-fold cross-validation of its own training "
        "patients, for cancer recall 0.97 and melanoma recall 0.95; 95 % intervals from 2,000 "
        "patient bootstrap resamples. `trained` is the recipe `make train` ships.",
        "",
        "| recipe | ROC AUC | recall | specificity | balanced accuracy | melanoma caught "
        "| ROC AUC vs shipped recipe (paired) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["recipes"].items():
        metrics = entry["metrics"]
        cells = [_estimate(metrics[key]) for key in HEADLINE]
        cells.append(_estimate(entry["flagged_by_diagnosis"]["MEL"]))
        difference = entry.get("auc_difference_vs_shipped_recipe")
        cells.append(
            "-"
            if difference is None
            else f"{difference['difference']:+.3f} ({difference['low']:+.3f} to "
            f"{difference['high']:+.3f}); not better in {difference['share_not_better']:.0%} "
            "of resamples (first repeat)"
        )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    diagnoses = list(next(iter(report["recipes"].values()))["flagged_by_diagnosis"])
    lines += [
        "",
        "Called suspicious, by diagnosis (share of that diagnosis' photos):",
        "",
        "| recipe | " + " | ".join(diagnoses) + " |",
        "|---" * (1 + len(diagnoses)) + "|",
    ]
    for name, entry in report["recipes"].items():
        flagged = entry["flagged_by_diagnosis"]
        lines.append(
            f"| {name} | " + " | ".join(f"{flagged[key]['value']:.3f}" for key in diagnoses) + " |"
        )
    ink = report.get("pen_ink")
    if ink is not None:
        lines += [
            "",
            "## Pen ink",
            "",
            f"{ink['inked_photos']} photos carry surgical-pen ink ({ink['inked_cancers']} of them "
            "cancers; `skinscreen.trainer.ink`). Scored by the trained recipe's outer models of "
            "repeat 1, as they are and with the ink painted out:",
            "",
            f"- cancer probability moves by {ink['mean_abs_change']:.3f} on average "
            f"(at most {ink['max_abs_change']:.3f});",
            f"- cancers: mean {ink['cancers_mean'][0]:.3f} -> {ink['cancers_mean'][1]:.3f}; "
            f"benign: {ink['benign_mean'][0]:.3f} -> {ink['benign_mean'][1]:.3f};",
            f"- ROC AUC among inked photos {ink['roc_auc_inked'][0]:.3f} -> "
            f"{ink['roc_auc_inked'][1]:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def add_command(commands: Any) -> None:
    """`skinscreen-research model-selection`."""
    parser = commands.add_parser(
        "model-selection",
        allow_abbrev=False,
        help="candidate fusion recipes against the shipped one on the same nested folds",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("--data", type=Path, required=True, help="PAD-UFES-20 folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the report")
    parser.add_argument("--trained", type=Path, help="run folder of the shipped recipe")
    parser.add_argument(
        "--recipes", default=",".join(RECIPES), help="comma-separated names from RECIPES"
    )
    parser.set_defaults(handler=command_model_selection)


def command_model_selection(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = load_pad_ufes(args.data)
    for name in args.recipes.split(","):
        run_recipe(name, dataset, args.data, args.out)
    if args.trained is not None:
        report = summarise(args.out, args.trained, dataset.groups)
        report["pen_ink"] = pen_ink(dataset, args.trained)
        (args.out / "selection.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "selection.md").write_text(render(report))
    return 0
