"""The two answers to class imbalance of the fusion paper: a weighted loss, and DE mutation.

The Differential Evolution mutation makes a new training image from three of
the same class, X4 = X1 + alpha * (X2 - X3) with alpha ~ U(-0.5, 0.5), and
copies the clinical values of one of the three at random.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Balancing = Literal["weighted", "de-mutation", "none"]
ALPHA_RANGE = (-0.5, 0.5)


def class_weights(labels: np.ndarray, n_classes: int = 2) -> torch.Tensor:
    """W_i = N / n_i, the weight of class i in the cross-entropy.

    A class without any training example (a rare diagnosis in a small subset)
    gets weight 0: it never appears in the loss anyway.
    """
    if len(labels) == 0:
        raise ValueError("cannot weight classes without any training example")
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.divide(len(labels), counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32)


@dataclass(frozen=True)
class Mutant:
    """Where a synthetic example came from: three parents and the mixing factor."""

    parents: tuple[int, int, int]
    alpha: float
    clinical_parent: int
    label: int


def plan_de_mutation(labels: np.ndarray, rng: np.random.Generator) -> list[Mutant]:
    """Plan enough mutants of every smaller class to match the largest class.

    Each mutant draws three distinct parents of its class; a class with fewer
    than three examples cannot be mutated and is left as it is.
    """
    counts = np.bincount(labels)
    target = counts.max()
    mutants: list[Mutant] = []
    for label, count in enumerate(counts):
        members = np.flatnonzero(labels == label)
        if count >= target or count < 3:
            continue
        for _ in range(target - count):
            parents = tuple(int(index) for index in rng.choice(members, size=3, replace=False))
            mutants.append(
                Mutant(
                    parents=(parents[0], parents[1], parents[2]),
                    alpha=float(rng.uniform(*ALPHA_RANGE)),
                    clinical_parent=int(rng.choice(parents)),
                    label=label,
                )
            )
    return mutants


def mutate_images(
    x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """X4 = X1 + alpha (X2 - X3) on uint8 [N, S, S, 3] photos, clipped back to uint8."""
    a = alpha.view(-1, 1, 1, 1).to(torch.float32)
    mixed = x1.to(torch.float32) + a * (x2.to(torch.float32) - x3.to(torch.float32))
    return mixed.clamp(0, 255).round().to(torch.uint8)


def apply_de_mutation(
    images: torch.Tensor, clinical: torch.Tensor, mutants: list[Mutant]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The synthetic (images, clinical, labels) that `mutants` describe."""
    if not mutants:
        return (images[:0], clinical[:0], torch.zeros(0, dtype=torch.int64))
    p1, p2, p3 = (torch.tensor([m.parents[k] for m in mutants]) for k in range(3))
    alpha = torch.tensor([m.alpha for m in mutants])
    new_images = mutate_images(images[p1], images[p2], images[p3], alpha)
    new_clinical = clinical[torch.tensor([m.clinical_parent for m in mutants])].clone()
    labels = torch.tensor([m.label for m in mutants], dtype=torch.int64)
    return new_images, new_clinical, labels
