"""The served image-only model, skinscreen-dermoscopy: the paper's network (shapes for 1-3
blocks, its training pieces), its image-only export and card, and its production recipe run
through `skinscreen-trainer train --model skinscreen-dermoscopy` on real HAM10000 images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from skinscreen.core.card import ModelCard, latest_version, read_card, verified_model
from skinscreen.core.ham10000 import load_ham10000
from skinscreen.trainer.cli import main
from skinscreen.trainer.dermoscopy import (
    DermoscopyNetwork,
    NetworkSpec,
    balanced_epoch,
    load_checkpoint,
)
from skinscreen.trainer.dermoscopy_training import lesion_split
from skinscreen.trainer.export import ExportError, export_image_only_onnx
from skinscreen.trainer.pipeline import select_subset
from skinscreen.trainer.training import load_images
from tests.conftest import REPO, missing_data_arguments


@pytest.mark.parametrize(
    ("blocks", "maps", "parameters"),
    [
        # 150 -> conv 148 -> pool 74 -> conv 72 -> pool 36 -> conv 34 -> pool 17
        (1, (32, 74, 74), 896 + 32 * 74 * 74 * 64 + 64 + 65),
        (2, (32, 36, 36), 896 + 9248 + 32 * 36 * 36 * 64 + 64 + 65),
        (3, (64, 17, 17), 896 + 9248 + 18496 + 64 * 17 * 17 * 64 + 64 + 65),
    ],
)
def test_network_shapes_follow_the_paper(
    blocks: int, maps: tuple[int, int, int], parameters: int
) -> None:
    spec = NetworkSpec(blocks=blocks, image_size=150)
    torch.manual_seed(0)
    network = DermoscopyNetwork(spec).eval()
    images = torch.randint(0, 256, (3, 150, 150, 3), dtype=torch.uint8)
    network.set_pixel_statistics(images)
    with torch.inference_mode():
        x = (images.permute(0, 3, 1, 2).float() - network.pixel_mean) / network.pixel_std
        features = network.features(x)
        probability = network(images)
    assert features.shape == (3, *maps)
    assert spec.flat_features == maps[0] * maps[1] * maps[2]
    assert probability.shape == (3,)
    assert ((probability > 0) & (probability < 1)).all()
    assert sum(p.numel() for p in network.parameters()) == parameters
    # One 64-unit dense layer, one output.
    dense = [m for m in network.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dense] == [(spec.flat_features, 64), (64, 1)]


@pytest.mark.parametrize(("blocks", "size"), [(0, 150), (4, 150), (3, 20)])
def test_impossible_networks_are_refused(blocks: int, size: int) -> None:
    with pytest.raises(ValueError, match=r"blocks must be 1 to 3|too small for 3 blocks"):
        NetworkSpec(blocks=blocks, image_size=size)


def test_pixel_statistics_are_those_of_the_training_photos() -> None:
    images = torch.randint(0, 256, (5, 40, 40, 3), dtype=torch.uint8)
    network = DermoscopyNetwork(NetworkSpec(blocks=1, image_size=40))
    network.set_pixel_statistics(images)
    pixels = images.reshape(-1, 3).double()
    torch.testing.assert_close(network.pixel_mean.flatten().double(), pixels.mean(dim=0))
    torch.testing.assert_close(
        network.pixel_std.flatten().double(), pixels.std(dim=0, correction=0), rtol=1e-4, atol=0
    )


def test_balanced_epoch_takes_every_malignant_and_as_many_fresh_benign() -> None:
    labels = np.array([1] * 10 + [0] * 40)
    rows = np.arange(5, 50)  # five malignant rows are not training rows
    rng = np.random.default_rng(0)
    first, second = balanced_epoch(labels, rows, rng), balanced_epoch(labels, rows, rng)
    for epoch in (first, second):
        assert len(set(epoch)) == len(epoch) == 10
        assert set(epoch[labels[epoch] == 1]) == set(range(5, 10))
        assert set(epoch) <= set(rows)
    assert set(first[labels[first] == 0]) != set(second[labels[second] == 0])


def test_image_only_export_takes_the_photo_alone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = DermoscopyNetwork(NetworkSpec(blocks=3, image_size=64)).eval()
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    difference = export_image_only_onnx(network, tmp_path / "model.onnx", images, 64)
    assert difference <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert (image.name, image.type, image.shape[1:]) == ("image", "tensor(uint8)", [64, 64, 3])
    (output,) = session.get_outputs()
    assert (output.name, output.type, len(output.shape)) == (
        "cancer_probability",
        "tensor(float)",
        1,
    )
    more = np.random.default_rng(1).integers(0, 256, (7, 64, 64, 3), dtype=np.uint8)
    with torch.inference_mode():
        expected = network(torch.from_numpy(more)).numpy()
    np.testing.assert_allclose(session.run(None, {"image": more})[0], expected, atol=1e-5)
    with pytest.raises(ExportError, match=r"parity images must be uint8 \[N, 64, 64, 3\]"):
        export_image_only_onnx(network, tmp_path / "m.onnx", images[:, :32], 64)


def test_cards_declare_their_inputs_and_old_cards_mean_both() -> None:
    card = read_card(latest_version(REPO / "models", "skinscreen-fusion"))
    assert card.inputs == ("image", "clinical")  # written before the field existed
    image_only = ModelCard.model_validate({**card.model_dump(), "inputs": ["image"]})
    assert json.loads(image_only.model_dump_json())["inputs"] == ["image"]
    for wrong in (["clinical"], [], ["image", "image"], ["image", "metadata"]):
        with pytest.raises(ValueError, match="inputs"):
            ModelCard.model_validate({**card.model_dump(), "inputs": wrong})


@pytest.fixture(scope="module")
def recipe_run(ham10000_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The production recipe, small: 100 real images, 2 epochs on the split, 2 folds."""
    root = tmp_path_factory.mktemp("dermoscopy-recipe")
    code = main(
        [
            "train",
            "--model",
            "skinscreen-dermoscopy",
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
            "--image-size",
            "64",
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
def test_recipe_trains_evaluates_and_publishes_the_image_only_model(
    recipe_run: dict[str, Path], ham10000_dir: Path
) -> None:
    run_dir = recipe_run["run"]
    for name in ("config.json", "report.json", "checkpoint.pt", "model.onnx", "card.json"):
        assert (run_dir / name).stat().st_size > 0, name
    # Only the served network: the paper's sweep and Lite0 are skinscreen-research's.
    assert not (run_dir / "report.md").exists()
    report = json.loads((run_dir / "report.json").read_text())
    dataset = select_subset(load_ham10000(ham10000_dir), 100, 0)
    split = lesion_split(dataset.labels, dataset.groups, 0)
    assert report["split"] == {
        "train": len(split.train),
        "validation": len(split.validation),
        "test": len(split.test),
    }
    for scores in report["test"].values():
        # Scored on the held-out test part: every test image in the confusion matrix.
        assert sum(map(sum, scores["confusion_matrix"])) == len(split.test)
    assert len(report["validation_auc_per_epoch"]) == 2
    assert report["onnx_parity_max_abs_difference"] <= 1e-4

    model_path, card = verified_model(recipe_run["published"])
    assert card.name == "skinscreen-dermoscopy"
    assert card.inputs == ("image",)
    assert (card.input_size, card.use_clinical, card.folds) == (64, False, 2)
    assert card.backbone == "dermoscopy-cnn-3-blocks"
    assert report["threshold"] == card.decision_threshold.value
    assert {"recall", "balanced_accuracy", "roc_auc"} <= set(card.cross_validation)
    assert card.training_config["max_samples"] == 100
    # The served ONNX agrees with the run's PyTorch checkpoint on real images.
    images = load_images(dataset.subset(split.test[:5]), 64).numpy()
    network, extra = load_checkpoint(run_dir / "checkpoint.pt")
    assert extra["threshold"] == card.decision_threshold.value
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        reference = network(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(session.run(None, {"image": images})[0], reference, atol=1e-4)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--data", "{missing}"], "does not exist; pass the HAM10000 folder"),
        (["--epochs", "0"], "--epochs: Input should be greater than or equal to 1"),
        (["--image-size", "20"], "--image-size: Input should be greater than or equal to 32"),
        (["--max-samples", "10"], "--max-samples: Input should be greater than or equal to 50"),
    ],
)
def test_bad_recipe_input_is_refused_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    arguments = missing_data_arguments(arguments, tmp_path)
    runs, store = tmp_path / "runs", tmp_path / "store"
    code = main(
        [
            "train",
            "--model",
            "skinscreen-dermoscopy",
            *arguments,
            "--runs",
            str(runs),
            "--store",
            str(store),
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not runs.exists()
    assert not store.exists()


def test_options_of_another_recipe_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """The fusion recipe's options are not the image-only model's: argparse says which."""
    with pytest.raises(SystemExit) as raised:
        main(["train", "--model", "skinscreen-dermoscopy", "--data", "x", "--backbone", "resnet50"])
    assert raised.value.code == 2
    assert "unrecognized arguments: --backbone resnet50" in capsys.readouterr().err


def test_a_model_without_a_recipe_is_refused_with_the_recipes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["train", "--model", "skinscreen-nothing", "--data", "x"]) == 2
    error = capsys.readouterr().err
    assert "no recipe makes a model named 'skinscreen-nothing'" in error
    assert "skinscreen-dermoscopy, skinscreen-fusion" in error
