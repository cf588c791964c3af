"""Augmentation: shape and type kept, seeded and reproducible, and really varied."""

from __future__ import annotations

import torch

from skinscreen.trainer.augment import augment


def _photos() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=generator)


def test_shape_and_dtype_are_kept() -> None:
    out = augment(_photos(), torch.Generator().manual_seed(1))
    assert out.shape == (4, 32, 32, 3)
    assert out.dtype == torch.uint8


def test_same_seed_same_views_other_seed_other_views() -> None:
    photos = _photos()
    first = augment(photos, torch.Generator().manual_seed(5))
    again = augment(photos, torch.Generator().manual_seed(5))
    other = augment(photos, torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, photos)


def test_a_flat_photo_stays_flat_apart_from_colour() -> None:
    # Geometry with reflection padding adds no black corners to a uniform photo.
    flat = torch.full((2, 32, 32, 3), 128, dtype=torch.uint8)
    out = augment(flat, torch.Generator().manual_seed(2))
    for photo in out:
        assert photo.float().std() < 1.0
