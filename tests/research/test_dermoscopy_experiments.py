"""The dermoscopy paper's experiments: a small real run of `skinscreen-research dermoscopy` on
HAM10000, and the `dermoscopy-lite0` comparison against the version that run published."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from skinscreen.core.card import latest_version
from skinscreen.research.cli import main
from tests.conftest import REPO, missing_data_arguments


@pytest.fixture(scope="module")
def small_run(ham10000_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real, small run: 100 real images, every experiment, export and publish."""
    root = tmp_path_factory.mktemp("dermoscopy")
    code = main(
        [
            "dermoscopy",
            "--data",
            str(ham10000_dir),
            "--max-samples",
            "100",
            "--epochs",
            "2",
            "--cv-epochs",
            "1",
            "--folds",
            "2",
            "--lite0-image-size",
            "64",
            "--lite0-epochs",
            "1",
            "--runs",
            str(root / "runs"),
            "--store",
            str(root / "store"),
        ]
    )
    assert code == 0
    (run_dir,) = (root / "runs").iterdir()
    (published,) = (root / "store" / "skinscreen-dermoscopy").iterdir()
    return {"run": run_dir, "published": published}


@pytest.mark.data
@pytest.mark.slow
def test_dermoscopy_command_reports_every_experiment(small_run: dict[str, Path]) -> None:
    run_dir = small_run["run"]
    for name in (
        "config.json",
        "report.json",
        "report.md",
        "roc_test.png",
        "confusion_test_paper.png",
        "confusion_test_screening.png",
        "roc_cross_validation.png",
        "model.onnx",
        "checkpoint.pt",
        "card.json",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    report = json.loads((run_dir / "report.json").read_text())
    assert report["data"]["images"] == 100
    assert sum(part["images"] for part in report["data"]["split"].values()) == 100
    names = [network["name"] for network in report["split_networks"]]
    assert names == ["1 block", "2 blocks", "3 blocks", "EfficientNet-Lite0 (cached)"]
    for network in report["split_networks"]:
        for scores in (network["test_at_0.5"], network["test_at_screening_threshold"]):
            assert {"roc_auc", "accuracy", "recall", "specificity", "precision"} <= set(scores)
            assert (
                sum(map(sum, scores["confusion_matrix"]))
                == report["data"]["split"]["test"]["images"]
            )
    assert len(report["split_networks"][2]["validation_auc_per_epoch"]) == 2
    assert len(report["cross_validation"]["per_fold"]) == 2
    assert report["command"].startswith("skinscreen-research dermoscopy")
    markdown = (run_dir / "report.md").read_text()
    assert "## Test split, sigmoid output read at 0.5 (as in the paper)" in markdown
    assert "| 3 blocks |" in markdown
    assert "## Cross-validation of the 3-block network (2 folds" in markdown


# The served network's own options are checked through `skinscreen-trainer train` too
# (tests/test_dermoscopy.py); these are checked as the research command reads them.
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--data", "{missing}"], "does not exist; pass the HAM10000 folder"),
        (["--name", "Bad Name"], "--name: String should match pattern"),
        (["--lite0-epochs", "0"], "--lite0-epochs: Input should be greater than or equal to 1"),
    ],
)
def test_bad_dermoscopy_input_is_refused_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    arguments = missing_data_arguments(arguments, tmp_path)
    runs, store = tmp_path / "runs", tmp_path / "store"
    code = main(["dermoscopy", *arguments, "--runs", str(runs), "--store", str(store)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not runs.exists()
    assert not store.exists()


def test_unknown_lite0_mode_lists_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["dermoscopy", "--data", "x", "--lite0-mode", "gpu"])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'gpu'" in error
    assert "'cached', 'full'" in error


def lite0_arguments(data: Path, reference: Path, runs: Path) -> list[str]:
    return [
        "dermoscopy-lite0",
        "--data",
        str(data),
        "--reference",
        str(reference),
        "--lite0-mode",
        "full",
        "--lite0-image-size",
        "64",
        "--lite0-epochs",
        "1",
        "--lite0-learning-rate",
        "3e-4",
        "--device",
        "cpu",
        "--runs",
        str(runs),
    ]


@pytest.mark.data
@pytest.mark.slow
def test_lite0_comparison_rebuilds_the_reference_split_and_scores_its_onnx(
    small_run: dict[str, Path], ham10000_dir: Path, tmp_path: Path
) -> None:
    """Lite0, fully fine-tuned, beside the published 3-block network on the same test images;
    the reference's scores are those of its own run, through the ONNX that is served."""
    runs = tmp_path / "runs"
    assert main(lite0_arguments(ham10000_dir, small_run["published"], runs)) == 0
    (run_dir,) = runs.iterdir()
    for name in (
        "config.json",
        "report.json",
        "report.md",
        "roc_test.png",
        "confusion_test_paper.png",
        "confusion_test_screening.png",
        "predictions.npz",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    report = json.loads((run_dir / "report.json").read_text())
    original = json.loads((small_run["run"] / "report.json").read_text())
    # Seed and subset come from the reference's card: the same 100 images, the same split.
    assert report["config"]["max_samples"] == 100
    assert report["data"] == original["data"]
    reference, lite0 = report["split_networks"]
    three_blocks = original["split_networks"][2]
    assert reference["name"].startswith("dermoscopy-cnn-3-blocks")
    for key in ("test_at_0.5", "test_at_screening_threshold"):
        assert reference[key]["roc_auc"] == pytest.approx(three_blocks[key]["roc_auc"], abs=1e-6)
        assert reference[key]["confusion_matrix"] == three_blocks[key]["confusion_matrix"]
    assert lite0["name"] == "EfficientNet-Lite0 (full)"
    assert sum(map(sum, lite0["test_at_0.5"]["confusion_matrix"])) == 20
    predictions = np.load(run_dir / "predictions.npz")
    assert predictions["lite0_test"].shape == predictions["test_rows"].shape == (20,)
    assert np.all((predictions["lite0_test"] >= 0) & (predictions["lite0_test"] <= 1))
    assert report["command"].startswith("skinscreen-research dermoscopy-lite0")
    markdown = (run_dir / "report.md").read_text()
    assert "# EfficientNet-Lite0 (full) against skinscreen-dermoscopy" in markdown
    assert "| EfficientNet-Lite0 (full) |" in markdown
    assert "Test ROC AUC of Lite0 minus the reference's:" in markdown
    gain = report["lite0_minus_reference_auc"]
    assert gain["difference"] == pytest.approx(
        lite0["test_at_0.5"]["roc_auc"] - reference["test_at_0.5"]["roc_auc"]
    )
    assert gain["low"] <= gain["high"]
    assert f"{gain['low']:+.3f} to {gain['high']:+.3f}" in markdown


@pytest.mark.data
@pytest.mark.slow
def test_lite0_comparison_refuses_a_reference_it_cannot_match(
    small_run: dict[str, Path],
    ham10000_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fusion model, a folder without a card, and a card whose split differs (another seed
    picks other images) are refused by name, before any run folder is made."""
    changed = tmp_path / "changed-seed"
    shutil.copytree(small_run["published"], changed)
    card = json.loads((changed / "card.json").read_text())
    card["training_config"]["seed"] = 1
    (changed / "card.json").write_text(json.dumps(card))
    fusion = latest_version(REPO / "models", "skinscreen-fusion")
    runs = tmp_path / "runs"
    for reference, message in (
        (fusion, "the reference must be an image-only dermoscopy model"),
        (tmp_path / "nothing", "card.json does not exist"),
        (changed, "is not the data skinscreen-dermoscopy"),
    ):
        assert main(lite0_arguments(ham10000_dir, reference, runs)) == 2
        assert message in capsys.readouterr().err
        assert not runs.exists()
