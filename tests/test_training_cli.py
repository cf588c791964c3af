"""The trainer through its command line: a real smoke run on real photos, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from skinscreen.core.card import MODEL_FILE, ModelIntegrityError, verified_model
from skinscreen.core.pad_ufes import load_pad_ufes
from skinscreen.trainer.cli import main
from skinscreen.trainer.model import load_checkpoint
from skinscreen.trainer.training import load_images
from tests.conftest import missing_data_arguments, official_layout_copy


@pytest.fixture(scope="module")
def smoke_run(pad_ufes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real, small run: 60 real photos, 2 x 5 nested patient-grouped folds, export,
    publish."""
    root = tmp_path_factory.mktemp("smoke")
    code = main(
        [
            "train",
            "--data",
            str(pad_ufes_dir),
            "--max-samples",
            "60",
            "--epochs",
            "3",
            "--views",
            "2",
            "--repeats",
            "2",
            "--runs",
            str(root / "runs"),
            "--store",
            str(root / "store"),
        ]
    )
    assert code == 0
    (run_dir,) = (root / "runs").iterdir()
    (published,) = (root / "store" / "skinscreen-fusion").iterdir()
    return {"root": root, "run": run_dir, "published": published}


@pytest.mark.data
@pytest.mark.slow
def test_smoke_run_writes_a_complete_run_folder(smoke_run: dict[str, Path]) -> None:
    run_dir = smoke_run["run"]
    for name in (
        "config.json",
        "report.json",
        "report.md",
        "roc.png",
        "checkpoint.pt",
        "model.onnx",
        "card.json",
    ):
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "report.json").read_text())
    assert report["data"]["photos"] == 60
    assert report["data"]["skipped_missing_image"] == 2298 - 1026
    assert [fold["repeat"] for fold in report["folds"]] == [1] * 5 + [2] * 5
    for fold in report["folds"]:
        assert set(fold) >= {"cancer_threshold", "roc_auc", "recall", "melanoma_recall"}
    out_of_sample = report["out_of_sample"]
    assert (out_of_sample["repeats"], out_of_sample["folds"]) == (2, 5)
    for estimate in out_of_sample["metrics"].values():
        assert estimate["low"] <= estimate["value"] <= estimate["high"]
    assert set(out_of_sample["flagged_by_diagnosis"]) == {"ACK", "BCC", "MEL", "NEV", "SCC", "SEK"}
    assert report["onnx_parity_max_abs_difference"] <= 1e-4
    assert json.loads((run_dir / "config.json").read_text())["max_samples"] == 60
    markdown = (run_dir / "report.md").read_text()
    assert "## What a new patient can expect" in markdown
    assert "2 x 5-fold cross-validation grouped by patient" in markdown


@pytest.mark.data
@pytest.mark.slow
def test_published_model_honours_the_onnx_contract(
    smoke_run: dict[str, Path], pad_ufes_dir: Path
) -> None:
    model_path, card = verified_model(smoke_run["published"])
    assert card.input_size == 224
    assert card.n_image_features == 22  # clinical share 0.5
    assert card.folds == 5
    assert card.decision_threshold.method == "recall"
    assert card.decision_threshold.recall_target == 0.97
    assert card.out_of_sample is not None
    assert card.decision_threshold.recall == card.out_of_sample.metrics["recall"]
    assert card.outputs == ("cancer_probability", "diagnosis_probabilities")
    assert card.data_fingerprint.startswith("sha256:")
    assert set(card.cross_validation) >= {"roc_auc", "recall", "balanced_accuracy"}
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert inputs["image"][0] == "tensor(uint8)"
    assert inputs["image"][1][1:] == [224, 224, 3]
    assert inputs["clinical"] == ("tensor(float)", [inputs["clinical"][1][0], 22])
    cancer_output, diagnosis_output = session.get_outputs()
    assert cancer_output.name == "cancer_probability"
    assert len(cancer_output.shape) == 1
    assert diagnosis_output.name == "diagnosis_probabilities"
    assert diagnosis_output.shape[1:] == [6]

    # Real photos through the shared preprocessing, batch sizes 1 and 5: ONNX agrees with
    # the PyTorch checkpoint of the same run.
    dataset = load_pad_ufes(pad_ufes_dir).subset(range(5))
    images = load_images(dataset, 224).numpy()
    clinical = dataset.clinical
    served = session.run(None, {"image": images, "clinical": clinical})
    single = session.run(None, {"image": images[:1], "clinical": clinical[:1]})
    model, extra = load_checkpoint(smoke_run["run"] / "checkpoint.pt")
    with torch.inference_mode():
        reference = model(torch.from_numpy(images), torch.from_numpy(clinical))
    for value, expected, first in zip(served, reference, single, strict=True):
        np.testing.assert_allclose(value, expected.numpy(), atol=1e-4)
        np.testing.assert_allclose(first, value[:1], atol=1e-5)
    assert extra["cancer_threshold"] == card.decision_threshold.value


@pytest.mark.data
@pytest.mark.slow
def test_published_versions_are_immutable_and_checked(
    smoke_run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store = smoke_run["root"] / "store"
    code = main(["publish", "--run", str(smoke_run["run"]), "--store", str(store)])
    assert code == 2
    assert "already published" in capsys.readouterr().err

    tampered = smoke_run["root"] / "tampered"
    tampered.mkdir()
    for name in ("card.json", MODEL_FILE):
        (tampered / name).write_bytes((smoke_run["published"] / name).read_bytes())
    with (tampered / MODEL_FILE).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="changed or damaged after publishing"):
        verified_model(tampered)


@pytest.mark.data
@pytest.mark.slow
def test_export_command_reproduces_the_run(
    smoke_run: dict[str, Path], pad_ufes_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = smoke_run["root"] / "again.onnx"
    code = main(
        [
            "export",
            "--checkpoint",
            str(smoke_run["run"] / "checkpoint.pt"),
            "--data",
            str(pad_ufes_dir),
            "--output",
            str(output),
        ]
    )
    assert code == 0
    assert "max |ONNX Runtime - PyTorch|" in capsys.readouterr().out
    assert output.stat().st_size > 1_000_000


@pytest.mark.data
@pytest.mark.slow
def test_reexport_command_publishes_a_derived_version(
    smoke_run: dict[str, Path], pad_ufes_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = smoke_run["root"] / "store"
    before = set((store / "skinscreen-fusion").iterdir())
    code = main(
        [
            "reexport",
            "--checkpoint",
            str(smoke_run["run"] / "checkpoint.pt"),
            "--published",
            str(smoke_run["published"]),
            "--data",
            str(pad_ufes_dir),
            "--store",
            str(store),
        ]
    )
    assert code == 0
    assert f"derived from {smoke_run['published'].name}" in capsys.readouterr().out
    (derived,) = set((store / "skinscreen-fusion").iterdir()) - before
    _, card = verified_model(derived)
    assert card.derived_from is not None
    assert card.derived_from.version == smoke_run["published"].name
    assert card.derived_from.max_difference <= 1e-5
    assert card.derived_from.photos == 64


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--data", "{missing}"], "does not exist; pass the PAD-UFES-20 folder"),
        (
            ["--clinical-share", "1.5"],
            "--clinical-share: Input should be less than 1 (given '1.5')",
        ),
        (["--clinical-share", "0"], "--clinical-share: Input should be greater than 0"),
        (["--epochs", "0"], "--epochs: Input should be greater than or equal to 1"),
        (["--resnet-weights", "/nonexistent.pt"], "resnet_weights is only for backbone"),
    ],
)
def test_bad_training_input_is_refused_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    arguments = missing_data_arguments(arguments, tmp_path)
    code = main(
        ["train", *arguments, "--runs", str(tmp_path / "runs"), "--store", str(tmp_path / "store")]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "store").exists()


def test_unknown_backbone_lists_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["train", "--data", str(tmp_path), "--backbone", "vgg16"])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'vgg16'" in error
    assert (
        "'efficientnet-lite0', 'efficientnet-lite1', 'efficientnet-lite2', 'resnet50', 'simple-cnn'"
        in error
    )


@pytest.mark.data
@pytest.mark.slow
def test_evaluate_scores_a_published_model_on_a_data_folder(
    smoke_run: dict[str, Path],
    pad_ufes_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    official_layout_copy(pad_ufes_dir, tmp_path, rows=12)
    code = main(
        [
            "evaluate",
            "--model",
            str(smoke_run["published"]),
            "--data",
            str(tmp_path),
            "--betas",
            "1,5",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["photos"] == 12
    assert set(result["metrics"]) >= {
        "roc_auc",
        "recall",
        "balanced_accuracy",
        "f1",
        "f5",
        "confusion_matrix",
    }
    assert sum(map(sum, result["metrics"]["confusion_matrix"])) == 12


# Runs the trainer's command line in a fresh interpreter, then prints which heavy modules it
# loaded: the registry commands must start without torch (or ONNX Runtime).
LIGHT_PROBE = """
import json, sys
from skinscreen.trainer.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = ("torch", "onnxruntime", "skinscreen.trainer.recipes")
print(json.dumps({"code": code, "loaded": [name for name in heavy if name in sys.modules]}))
"""


def run_light_probe(arguments: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    probe = subprocess.run(
        [sys.executable, "-c", LIGHT_PROBE, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert probe.returncode == 0, probe.stderr
    result: dict[str, Any] = json.loads(probe.stdout.splitlines()[-1])
    result["stdout"] = probe.stdout
    return result


def test_registry_commands_start_without_torch() -> None:
    for arguments in (["models", "list", "--help"], ["runs", "submit", "--help"], ["--help"]):
        result = run_light_probe(arguments)
        assert result["code"] == 0, result
        assert result["loaded"] == [], arguments


def test_the_probe_sees_torch_when_a_command_loads_it() -> None:
    """The probe above can fail: `train --help` lists the fusion recipe's options, which
    needs the recipe, and with it torch."""
    result = run_light_probe(["train", "--help"])
    assert result["code"] == 0
    assert "--clinical-share" in result["stdout"]
    assert "torch" in result["loaded"]
