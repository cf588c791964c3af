"""The training loop on real photos: seeded runs repeat exactly, and every mode trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skinscreen.core.pad_ufes import load_pad_ufes
from skinscreen.trainer.config import TrainConfig
from skinscreen.trainer.pipeline import select_subset
from skinscreen.trainer.training import Trainer, load_images, paper_schedule

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _trainer(pad_ufes_dir: Path, **overrides: object) -> Trainer:
    config = TrainConfig.model_validate(
        {
            "data": pad_ufes_dir,
            "max_samples": 40,
            "epochs": 2,
            "views": 1,
            "ensemble": 2,
            "image_size": 96,
            **overrides,
        }
    )
    dataset = select_subset(load_pad_ufes(pad_ufes_dir), config.max_samples, config.seed)
    return Trainer(config, dataset, load_images(dataset, config.image_size))


def test_same_seed_same_model(pad_ufes_dir: Path) -> None:
    rows = np.arange(30)
    held_out = np.arange(30, 40)
    first = _trainer(pad_ufes_dir)
    second = _trainer(pad_ufes_dir)
    once = first.predict(first.fit(rows, seed=3, desc="a"), held_out)
    again = second.predict(second.fit(rows, seed=3, desc="b"), held_out)
    other = first.predict(first.fit(rows, seed=4, desc="c"), held_out)
    np.testing.assert_array_equal(once, again)
    assert not np.array_equal(once, other)


@pytest.mark.parametrize(
    "overrides",
    [
        {"balancing": "de-mutation"},
        {"mode": "cached"},
        {"balancing": "none", "target": "cancer", "optimizer": "sgd", "schedule": "paper"},
        {"mode": "full", "backbone": "simple-cnn", "ensemble": 1},
        {"use_clinical": False, "clinical_share": 0.5},
    ],
)
def test_each_mode_trains_and_predicts_probabilities(
    pad_ufes_dir: Path, overrides: dict[str, object]
) -> None:
    trainer = _trainer(pad_ufes_dir, **overrides)
    ensemble = trainer.fit(np.arange(32), seed=0, desc="fit")
    probabilities = trainer.predict(ensemble, np.arange(32, 40))
    assert probabilities.shape == (8,)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_paper_schedule_halves_then_fifths_every_20_epochs() -> None:
    assert [paper_schedule(epoch) for epoch in (0, 19, 20, 39, 40, 60)] == pytest.approx(
        [1.0, 1.0, 0.5, 0.5, 0.1, 0.05]
    )


@pytest.mark.parametrize("mode", ["features", "cached"])
def test_cached_predictions_are_what_the_served_graph_gives(pad_ufes_dir: Path, mode: str) -> None:
    """The thresholds are chosen on the trainer's predictions from cached trunk maps; the
    served graph recomputes everything from pixels. Both must give the same probabilities
    (to the float16 rounding of the cache)."""
    trainer = _trainer(pad_ufes_dir, mode=mode)
    ensemble = trainer.fit(np.arange(32), seed=0, desc="fit")
    rows = np.arange(32, 40)
    classes = trainer.predict_classes(ensemble, rows)
    with torch.inference_mode():
        cancer, diagnoses = ensemble.eval()(
            trainer.images[rows], torch.from_numpy(trainer.dataset.clinical[rows])
        )
    np.testing.assert_allclose(classes, diagnoses.numpy(), atol=2e-3)
    np.testing.assert_allclose(trainer.predict(ensemble, rows), cancer.numpy(), atol=2e-3)
