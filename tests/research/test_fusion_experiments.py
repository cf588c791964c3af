"""The fusion paper's experiments: a small real run of the command, the choice of the best
setting, one trunk cache shared by every setting, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import fbeta_score

from skinscreen.core.pad_ufes import load_pad_ufes
from skinscreen.research.cli import main
from skinscreen.research.fusion_experiments import Setting, best_setting, head_config
from skinscreen.trainer.config import TrainConfig
from skinscreen.trainer.evaluation import Threshold, fbeta_at
from skinscreen.trainer.pipeline import CrossValidation, select_subset
from skinscreen.trainer.training import Trainer, load_images
from tests.conftest import missing_data_arguments


@pytest.fixture(scope="module")
def small_run(pad_ufes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 real photos, 2 patient-grouped folds, two clinical shares: every table and figure."""
    runs = tmp_path_factory.mktemp("experiments") / "runs"
    code = main(
        [
            "experiments",
            "--data",
            str(pad_ufes_dir),
            "--max-samples",
            "60",
            "--folds",
            "2",
            "--epochs",
            "2",
            "--views",
            "1",
            "--ensemble",
            "1",
            "--image-size",
            "64",
            "--target",
            "cancer",
            "--clinical-shares",
            "0.3,0.5",
            "--runs",
            str(runs),
        ]
    )
    assert code == 0
    (run_dir,) = runs.iterdir()
    return run_dir


@pytest.mark.data
@pytest.mark.slow
def test_experiments_command_writes_every_table_and_figure(small_run: Path) -> None:
    report = json.loads((small_run / "report.json").read_text())
    assert report["data"]["photos"] == 60
    betas = [1.0, 3.0, 5.0, 7.0, 10.0]
    sweep = report["sweep"]
    assert [(row["clinical_share"], row["beta"]) for row in sweep] == [
        (share, beta) for share in (0.3, 0.5) for beta in betas
    ]
    assert {row["n_image_features"] for row in sweep} == {51, 22}
    best = report["best"]
    assert best["clinical_share"] in (0.3, 0.5)
    assert best["beta"] in betas
    assert [row["use_clinical"] for row in report["clinical"]] == [True, False]
    assert [row["balancing"] for row in report["balancing"]] == ["weighted", "de-mutation", "none"]
    for row in (*sweep, *report["clinical"], *report["balancing"]):
        for key in ("roc_auc", "balanced_accuracy", "precision", "recall"):
            assert 0.0 <= row[key]["mean"] <= 1.0
            assert row[key]["std"] >= 0.0
    for row in (*report["clinical"], *report["balancing"]):
        assert (row["clinical_share"], row["beta"]) == (best["clinical_share"], best["beta"])

    for name in ("tsne_with_clinical.png", "tsne_image_only.png"):
        with Image.open(small_run / name) as figure:
            assert figure.format == "PNG"
            assert min(figure.size) > 200
    for part in ("load_photos", "cache_views", "cv_lambda_0.3", "cv_image_only", "tsne", "total"):
        assert report["timings_s"][f"{part}_s"] >= 0.0

    markdown = (small_run / "report.md").read_text()
    for heading in (
        "## Clinical share and F-beta selection (Tables II-III)",
        "## With vs without clinical information (Table IV)",
        "## Class balancing (Table V)",
        "## t-SNE of the features before the classifier (Figures 6-7)",
        "## Time",
    ):
        assert heading in markdown
    assert "| de-mutation | " in markdown
    assert "![tsne_image_only](tsne_image_only.png)" in markdown
    assert "    --clinical-shares 0.3,0.5 \\" in markdown
    assert json.loads((small_run / "config.json").read_text())["training"]["max_samples"] == 60


def _setting(share: float, scores: dict[float, tuple[float, float]]) -> Setting:
    """A setting whose folds scored (balanced accuracy, recall) per beta."""
    by_beta = {}
    for beta, (balanced_accuracy, recall) in scores.items():
        summary = {
            "balanced_accuracy": {"mean": balanced_accuracy, "std": 0.0},
            "recall": {"mean": recall, "std": 0.0},
        }
        empty = np.zeros(0)
        by_beta[beta] = CrossValidation(
            empty, empty, [], Threshold(0.5, "fbeta", ""), [], [], summary, {}
        )
    return Setting(f"lambda_{share}", share, True, "weighted", by_beta, 0.0)


def test_best_setting_puts_recall_first_then_balanced_accuracy() -> None:
    low = _setting(0.1, {1.0: (0.80, 0.90), 5.0: (0.74, 0.96)})
    high = _setting(0.3, {1.0: (0.82, 0.91), 5.0: (0.76, 0.95)})
    best, beta = best_setting([low, high], (1.0, 5.0), recall_target=0.95)
    assert (best.clinical_share, beta) == (0.3, 5.0)
    # No setting reaches the target: the highest recall wins, whatever its accuracy.
    best, beta = best_setting([low, high], (1.0, 5.0), recall_target=0.99)
    assert (best.clinical_share, beta) == (0.1, 5.0)


def test_fbeta_selection_scores_exactly_like_scikit_learn() -> None:
    """F-beta selection scores every candidate threshold at once; the scores must not move."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    probabilities = np.round(rng.random(300), 2)  # ties, as real predictions have
    candidates = np.unique(probabilities)
    for beta in (1.0, 3.0, 10.0):
        expected = [
            fbeta_score(labels, probabilities >= candidate, beta=beta, zero_division=0)
            for candidate in candidates
        ]
        np.testing.assert_array_equal(fbeta_at(labels, probabilities, candidates, beta), expected)


@pytest.mark.data
def test_settings_share_one_trunk_cache(pad_ufes_dir: Path) -> None:
    config = TrainConfig(data=pad_ufes_dir, max_samples=20, views=1, image_size=64)
    dataset = select_subset(load_pad_ufes(pad_ufes_dir), 20, 0)
    base = Trainer(config, dataset, load_images(dataset, 64))
    other = base.for_config(head_config(config, 0.1, False, "none"))
    # Features mode (the default) keeps the pooled features, not the trunk maps.
    assert base.feature_views is not None
    assert base.clean_features is not None
    assert other.feature_views is base.feature_views
    assert other.clean_features is base.clean_features
    assert other.template.spec.n_image_features == 198
    assert not other.template.spec.use_clinical
    assert base.config.clinical_share == 0.5  # the original is left as it was
    with pytest.raises(ValueError, match="cannot reuse the cached trunk maps: views differ"):
        base.for_config(config.model_copy(update={"views": 2}))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--data", "{missing}"], "does not exist; pass the PAD-UFES-20 folder"),
        (
            ["--clinical-shares", "0.2,1.5"],
            "--clinical-shares: Value error, each clinical share must lie strictly between "
            "0 and 1: 1.5",
        ),
        (["--clinical-shares", "0.2,0.2"], "--clinical-shares: Value error, each clinical share"),
        (
            ["--clinical-shares", "0.2,x"],
            "--clinical-shares: Value error, each clinical share must be a number: 'x'",
        ),
        (["--tsne-points", "3"], "--tsne-points: Input should be greater than or equal to 10"),
        (["--epochs", "0"], "--epochs: Input should be greater than or equal to 1"),
    ],
)
def test_bad_experiments_input_is_refused_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    arguments = missing_data_arguments(arguments, tmp_path)
    code = main(["experiments", *arguments, "--runs", str(tmp_path / "runs")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_settings_the_experiments_sweep_are_not_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["experiments", "--data", "x", "--clinical-share", "0.3"])
    assert raised.value.code == 2
    assert "unrecognized arguments: --clinical-share 0.3" in capsys.readouterr().err
