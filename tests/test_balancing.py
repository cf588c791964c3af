"""Class imbalance: the weighted loss and the Differential Evolution mutation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skinscreen.trainer.balancing import (
    ALPHA_RANGE,
    apply_de_mutation,
    class_weights,
    mutate_images,
    plan_de_mutation,
)


def test_class_weights_are_n_over_n_i() -> None:
    labels = np.array([0] * 30 + [1] * 10)
    weights = class_weights(labels)
    torch.testing.assert_close(weights, torch.tensor([40 / 30, 40 / 10]))


def test_class_weights_over_six_diagnoses_and_an_absent_class() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [3] * 3)
    weights = class_weights(labels, n_classes=6)
    torch.testing.assert_close(weights, torch.tensor([2.0, 4.0, 0.0, 4.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="without any training example"):
        class_weights(np.zeros(0, dtype=np.int64))


def test_de_plan_balances_classes_from_same_class_parents() -> None:
    labels = np.array([0] * 50 + [1] * 12)
    mutants = plan_de_mutation(labels, np.random.default_rng(0))
    assert len(mutants) == 38
    for mutant in mutants:
        assert mutant.label == 1
        assert len(set(mutant.parents)) == 3
        assert all(labels[parent] == 1 for parent in mutant.parents)
        assert ALPHA_RANGE[0] <= mutant.alpha <= ALPHA_RANGE[1]
        assert mutant.clinical_parent in mutant.parents
    alphas = np.array([mutant.alpha for mutant in mutants])
    assert alphas.min() < 0 < alphas.max()  # both signs are drawn


def test_de_plan_is_reproducible_and_leaves_tiny_classes_alone() -> None:
    labels = np.array([0] * 20 + [1] * 2)
    assert plan_de_mutation(labels, np.random.default_rng(1)) == []
    labels = np.array([0] * 20 + [1] * 8)
    first = plan_de_mutation(labels, np.random.default_rng(7))
    second = plan_de_mutation(labels, np.random.default_rng(7))
    assert first == second


def test_mutation_formula_and_clipping() -> None:
    x1 = torch.full((1, 4, 4, 3), 100, dtype=torch.uint8)
    x2 = torch.full((1, 4, 4, 3), 200, dtype=torch.uint8)
    x3 = torch.full((1, 4, 4, 3), 40, dtype=torch.uint8)
    assert mutate_images(x1, x2, x3, torch.tensor([0.25])).unique().tolist() == [140]
    assert mutate_images(x1, x2, x3, torch.tensor([-0.5])).unique().tolist() == [20]
    bright = torch.full((1, 4, 4, 3), 250, dtype=torch.uint8)
    assert mutate_images(bright, x2, x3, torch.tensor([0.5])).unique().tolist() == [255]


def test_apply_de_mutation_shapes_and_clinical_copied_from_a_parent() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 8, 8, 3), dtype=torch.uint8, generator=generator)
    clinical = torch.arange(20, dtype=torch.float32).view(20, 1).repeat(1, 22)
    labels = np.array([0] * 14 + [1] * 6)
    mutants = plan_de_mutation(labels, np.random.default_rng(3))
    new_images, new_clinical, new_labels = apply_de_mutation(images, clinical, mutants)
    assert new_images.shape == (8, 8, 8, 3)
    assert new_images.dtype == torch.uint8
    assert new_clinical.shape == (8, 22)
    assert new_labels.tolist() == [1] * 8
    for row, mutant in enumerate(mutants):
        torch.testing.assert_close(new_clinical[row], clinical[mutant.clinical_parent])
        x1, x2, x3 = (images[index].float() for index in mutant.parents)
        expected = (x1 + mutant.alpha * (x2 - x3)).clamp(0, 255).round()
        torch.testing.assert_close(new_images[row].float(), expected)
