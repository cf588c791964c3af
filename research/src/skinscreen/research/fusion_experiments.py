"""The fusion paper's experiments on PAD-UFES-20: its tables and t-SNE figures, from real runs.

Every setting is cross-validated on the same patient-grouped folds:
- the clinical-share sweep (lambda -> N_FI), each scored with F-beta model
  selection for every beta (the paper's Tables II-III);
- with vs without clinical information at the best setting (Table IV);
- weighted loss vs DE mutation vs no balancing there (Table V);
- t-SNE of the features the classifier sees, with and without clinical
  information, coloured by class (Figures 6-7).
The frozen trunk does not depend on any of these settings: in cached mode it
is run once, and every setting reuses its maps.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sklearn.manifold import TSNE
from sklearn.model_selection import train_test_split

from skinscreen.core.pad_ufes import load_pad_ufes
from skinscreen.research.report import heading_section, plot_embedding
from skinscreen.trainer.balancing import Balancing
from skinscreen.trainer.config import TrainConfig
from skinscreen.trainer.evaluation import patient_folds
from skinscreen.trainer.model import ScreeningModel, n_image_features
from skinscreen.trainer.pipeline import (
    CrossValidation,
    new_run_dir,
    score_cross_validation,
    select_subset,
)
from skinscreen.trainer.report import time_section
from skinscreen.trainer.training import Trainer, load_images

log = logging.getLogger(__name__)

PAPER_CLINICAL_SHARES: Final = (0.1, 0.2, 0.3, 0.4, 0.5)
# Training settings the experiments set themselves, per table, or do not use (nothing
# is published, so no model name): the command offers no option for them.
FIXED_BY_EXPERIMENTS: Final = (
    "clinical_share",
    "use_clinical",
    "balancing",
    "threshold_method",
    "threshold_beta",
    "name",
)
BALANCINGS: Final[tuple[Balancing, ...]] = ("weighted", "de-mutation", "none")
# The paper's best result (cancer vs not, 5-fold cross-validation).
PAPER_BEST: Final = {"balanced_accuracy": 0.855, "recall": 0.964, "precision": 0.651}
TABLE_METRICS: Final = ("balanced_accuracy", "precision", "recall")


class FusionExperimentsConfig(BaseModel):
    """The experiments' own knobs; the training ones are a `TrainConfig`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clinical_shares: tuple[float, ...] = Field(
        PAPER_CLINICAL_SHARES, min_length=1, description="The lambdas of the sweep."
    )
    tsne_points: int | None = Field(
        None, ge=10, description="Photos shown in each t-SNE figure (a stratified subset)."
    )

    @field_validator("clinical_shares", mode="before")
    @classmethod
    def _shares_are_numbers(cls, shares: Any) -> Any:
        # Checked here, so that the message names the option rather than an item's index.
        if isinstance(shares, list | tuple):
            for share in shares:
                try:
                    float(share)
                except (TypeError, ValueError):
                    raise ValueError(f"each clinical share must be a number: {share!r}") from None
        return shares

    @field_validator("clinical_shares")
    @classmethod
    def _shares_are_fractions(cls, shares: tuple[float, ...]) -> tuple[float, ...]:
        for share in shares:
            if not 0.0 < share < 1.0:
                raise ValueError(f"each clinical share must lie strictly between 0 and 1: {share}")
        if len(set(shares)) != len(shares):
            raise ValueError(f"each clinical share once: {list(shares)}")
        return shares


@dataclass
class Setting:
    """One cross-validated configuration: its out-of-fold predictions, scored per beta."""

    name: str
    clinical_share: float
    use_clinical: bool
    balancing: str
    by_beta: dict[float, CrossValidation]
    seconds: float

    def row(self, beta: float) -> dict[str, Any]:
        summary = self.by_beta[beta].summary
        return {
            "setting": self.name,
            "clinical_share": self.clinical_share,
            "n_image_features": n_image_features(self.clinical_share),
            "use_clinical": self.use_clinical,
            "balancing": self.balancing,
            "beta": beta,
            "roc_auc": summary["roc_auc"],
            **{key: summary[key] for key in TABLE_METRICS},
        }


def head_config(
    config: TrainConfig, clinical_share: float, use_clinical: bool, balancing: Balancing
) -> TrainConfig:
    """`config` with one experiment's settings, validated like any other configuration."""
    return TrainConfig.model_validate(
        {
            **config.model_dump(),
            "clinical_share": clinical_share,
            "use_clinical": use_clinical,
            "balancing": balancing,
        }
    )


@dataclass
class FusionExperimentsResult:
    run_dir: Path
    report: dict[str, Any]


def run_fusion_experiments(
    config: TrainConfig, experiments: FusionExperimentsConfig, runs: Path, command: str
) -> FusionExperimentsResult:
    """Run every table and figure into a new run folder under `runs`.

    The folder holds config.json, report.json, report.md and the t-SNE PNGs;
    it is made once the data has loaded, so a wrong data folder leaves nothing.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    dataset = select_subset(load_pad_ufes(config.data), config.max_samples, config.seed)
    run_dir = new_run_dir(runs, f"fusion-experiments-{config.backbone}-{config.image_size}")
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "training": json.loads(config.model_dump_json()),
                "experiments": json.loads(experiments.model_dump_json()),
            },
            indent=2,
        )
        + "\n"
    )
    labels, betas = dataset.labels, config.report_betas
    images = load_images(dataset, config.image_size)
    timings["load_photos_s"] = time.perf_counter() - started

    mark = time.perf_counter()
    first = experiments.clinical_shares[0]
    base = Trainer(head_config(config, first, True, "weighted"), dataset, images)
    timings["cache_views_s"] = time.perf_counter() - mark
    folds = patient_folds(labels, dataset.groups, config.folds, config.seed)

    def cross_validate(
        name: str, clinical_share: float, use_clinical: bool, balancing: Balancing
    ) -> Setting:
        mark = time.perf_counter()
        trainer = base.for_config(head_config(config, clinical_share, use_clinical, balancing))
        probabilities = out_of_fold_probabilities(trainer, folds, config.seed)
        by_beta = {
            beta: score_cross_validation(
                labels, probabilities, folds, "fbeta", config.recall_target, beta, betas
            )
            for beta in betas
        }
        seconds = time.perf_counter() - mark
        timings[f"cv_{name}_s"] = seconds
        log.info("cross-validated %s in %.0f s", name, seconds)
        return Setting(name, clinical_share, use_clinical, balancing, by_beta, seconds)

    sweep = [
        cross_validate(f"lambda_{share}", share, True, "weighted")
        for share in experiments.clinical_shares
    ]
    best, best_beta = best_setting(sweep, betas, config.recall_target)
    share = best.clinical_share
    image_only = cross_validate("image_only", share, False, "weighted")
    balancings = {"weighted": best}
    for balancing in BALANCINGS[1:]:
        balancings[balancing] = cross_validate(balancing, share, True, balancing)

    mark = time.perf_counter()
    figures = {}
    for use_clinical, name in ((True, "tsne_with_clinical"), (False, "tsne_image_only")):
        figures[name] = _tsne(base, config, experiments, share, use_clinical, run_dir / name)
    timings["tsne_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - started

    report = {
        "command": command,
        "config": json.loads(config.model_dump_json()),
        "experiments": json.loads(experiments.model_dump_json()),
        "data": {
            "photos": len(dataset),
            "patients": len(set(dataset.groups)),
            "cancer": int(labels.sum()),
            "skipped_missing_image": dataset.skipped_missing_image,
            "diagnoses": dict(sorted(dataset.diagnoses.items())),
            "fingerprint": dataset.fingerprint(),
        },
        "best": {"clinical_share": share, "beta": best_beta},
        "sweep": [setting.row(beta) for setting in sweep for beta in betas],
        "clinical": [best.row(best_beta), image_only.row(best_beta)],
        "balancing": [setting.row(best_beta) for setting in balancings.values()],
        "figures": figures,
        "paper_best": PAPER_BEST,
        "timings_s": timings,
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (run_dir / "report.md").write_text(render_markdown(report))
    return FusionExperimentsResult(run_dir, report)


def out_of_fold_probabilities(
    trainer: Trainer, folds: list[tuple[np.ndarray, np.ndarray]], seed: int
) -> np.ndarray:
    """Each row's cancer probability from the model of the fold that held it out."""
    probabilities = np.zeros(len(trainer.targets), dtype=np.float64)
    for index, (train, test) in enumerate(folds):
        model = trainer.fit(train, seed=seed + index, desc=f"fold {index + 1}/{len(folds)}")
        probabilities[test] = trainer.predict(model, test)
    return probabilities


def best_setting(
    sweep: list[Setting], betas: tuple[float, ...], recall_target: float
) -> tuple[Setting, float]:
    """The (lambda, beta) with the best balanced accuracy among those reaching the recall target.

    Recall first, as the project ranks its errors; when no setting reaches the
    target, the one with the highest recall.
    """
    candidates = [(setting, beta) for setting in sweep for beta in betas]

    def mean(candidate: tuple[Setting, float], key: str) -> float:
        setting, beta = candidate
        return setting.by_beta[beta].summary[key]["mean"]

    reaching = [c for c in candidates if mean(c, "recall") >= recall_target]
    if reaching:
        return max(reaching, key=lambda c: mean(c, "balanced_accuracy"))
    return max(candidates, key=lambda c: mean(c, "recall"))


def _tsne(
    base: Trainer,
    config: TrainConfig,
    experiments: FusionExperimentsConfig,
    clinical_share: float,
    use_clinical: bool,
    stem: Path,
) -> str:
    """t-SNE of the classifier's input, for a model fitted on every photo; returns the PNG name.

    Out-of-fold features would come from five differently trained models, five
    different spaces; one model's features of its own training photos are
    comparable, though the classes separate more than on unseen photos.
    """
    trainer = base.for_config(head_config(config, clinical_share, use_clinical, "weighted"))
    rows = np.arange(len(trainer.targets))
    ensemble = trainer.fit(rows, seed=config.seed + config.folds, desc=stem.name)
    member = ensemble.members[0]
    assert isinstance(member, ScreeningModel)
    labels = trainer.dataset.labels
    if experiments.tsne_points is not None and experiments.tsne_points < len(rows):
        rows, _ = train_test_split(
            rows, train_size=experiments.tsne_points, stratify=labels, random_state=config.seed
        )
        rows = np.sort(rows)
    features = trainer.fused_features(member, rows)
    points = TSNE(
        perplexity=min(30.0, (len(rows) - 1) / 3), init="pca", random_state=config.seed
    ).fit_transform(features)
    inputs = f"with clinical information (λ = {clinical_share})" if use_clinical else "image only"
    plot_embedding(
        stem.with_suffix(".png"),
        points,
        labels[rows],
        f"t-SNE of the classifier's input, {inputs}",
    )
    return stem.with_suffix(".png").name


def _cell(value: dict[str, float]) -> str:
    return f"{value['mean']:.3f} ± {value['std']:.3f}"


def _table(rows: list[dict[str, Any]], first: str) -> list[str]:
    lines = [
        f"| {first} | λ | N_FI | β | ROC AUC | BACC | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = {
            "setting": row["setting"],
            "clinical": "with clinical" if row["use_clinical"] else "without clinical",
            "balancing": row["balancing"],
        }[first]
        lines.append(
            f"| {label} | {row['clinical_share']} | {row['n_image_features']} | "
            f"{row['beta']:g} | {_cell(row['roc_auc'])} | "
            + " | ".join(_cell(row[key]) for key in TABLE_METRICS)
            + " |"
        )
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    config, data, best = report["config"], report["data"], report["best"]
    betas = config["report_betas"]
    shares = report["experiments"]["clinical_shares"]
    sweep = {(row["clinical_share"], row["beta"]): row for row in report["sweep"]}
    pivot = [
        "| λ (N_FI) | " + " | ".join(f"β = {beta:g}" for beta in betas) + " |",
        "|---" * (len(betas) + 1) + "|",
    ]
    for share in shares:
        cells = [
            f"{sweep[(share, beta)]['balanced_accuracy']['mean']:.3f} / "
            f"{sweep[(share, beta)]['recall']['mean']:.3f}"
            for beta in betas
        ]
        pivot.append(
            f"| {share} ({sweep[(share, betas[0])]['n_image_features']}) | "
            + " | ".join(cells)
            + " |"
        )
    paper = report["paper_best"]
    lines = [
        *heading_section("The fusion paper's experiments on PAD-UFES-20", report["command"]),
        "",
        f"Data: {data['photos']} photos of {data['patients']} patients ({data['cancer']} "
        f"cancers); {data['skipped_missing_image']} metadata rows skipped for a missing photo. "
        f"Diagnoses: {', '.join(f'{k} {v}' for k, v in data['diagnoses'].items())}.",
        "",
        f"Every setting: {config['backbone']} at {config['image_size']} px, {config['mode']} "
        f"mode ({config['views']} augmented views), target {config['target']}, ensemble of "
        f"{config['ensemble']}, {config['optimizer']} lr {config['learning_rate']} "
        f"({config['schedule']}), {config['epochs']} epochs; {config['folds']} folds grouped by "
        "patient, the same folds for every setting. F-beta model selection: each fold is scored "
        "at the threshold that maximises F-beta on the other folds' out-of-fold predictions. "
        "Mean ± std over folds.",
        "",
        "## Clinical share and F-beta selection (Tables II-III)",
        "",
        "Balanced accuracy / recall, mean over folds:",
        "",
        *pivot,
        "",
        *_table(report["sweep"], "setting"),
        "",
        f"Best setting: λ = {best['clinical_share']}, β = {best['beta']:g} (the best balanced "
        f"accuracy among the settings whose mean recall reaches {config['recall_target']}; "
        "failing that, the highest recall).",
        "",
        "## With vs without clinical information (Table IV)",
        "",
        *_table(report["clinical"], "clinical"),
        "",
        "## Class balancing (Table V)",
        "",
        *_table(report["balancing"], "balancing"),
        "",
        f"The paper's best: balanced accuracy {paper['balanced_accuracy']}, recall "
        f"{paper['recall']}, precision {paper['precision']}.",
        "",
        "## t-SNE of the features before the classifier (Figures 6-7)",
        "",
        "A model fitted on every photo at the best λ, with and without clinical information; "
        "each point is one photo's input to the classifier (image features, and the "
        "standardised clinical vector when used).",
        "",
        *[f"![{name}]({file})" for name, file in report["figures"].items()],
        "",
        *time_section(report["timings_s"]),
        "",
    ]
    return "\n".join(lines)
