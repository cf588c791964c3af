"""Pen-ink detection and painting out, on a drawn line and on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skinscreen.core.imaging import load_and_preprocess
from skinscreen.trainer.ink import ink_mask, is_inked, paint_out


def _skin_with_a_pen_line() -> tuple[np.ndarray, np.ndarray]:
    photo = np.zeros((96, 96, 3), dtype=np.uint8)
    photo[...] = (205, 160, 140)  # skin
    photo[40:60, 40:60] = (120, 60, 50)  # a brown lesion
    line = np.zeros((96, 96), dtype=bool)
    line[10:86, 20:23] = True
    photo[line] = (40, 60, 170)  # a blue surgical-pen stroke
    return photo, line


def test_a_pen_line_is_found_and_painted_out_leaving_the_rest() -> None:
    photo, line = _skin_with_a_pen_line()
    found = ink_mask(photo)
    np.testing.assert_array_equal(found, line)  # the line, neither skin nor lesion
    assert is_inked(photo)
    painted = paint_out(photo)
    assert not ink_mask(painted).any()
    assert not is_inked(painted)
    # Far from the line nothing changes; on it, the fill is skin-coloured.
    np.testing.assert_array_equal(painted[:, 40:], photo[:, 40:])
    assert np.abs(painted[line].astype(int) - (205, 160, 140)).max() < 30


def test_a_photo_without_ink_is_left_as_it_is() -> None:
    photo, line = _skin_with_a_pen_line()
    photo[line] = (205, 160, 140)
    assert not is_inked(photo)
    np.testing.assert_array_equal(paint_out(photo), photo)


@pytest.mark.data
def test_real_inked_photos_are_found(pad_ufes_dir: Path) -> None:
    images = sorted((pad_ufes_dir / "images").glob("*.jpg"))[:200]
    inked = [is_inked(load_and_preprocess(path, 224)) for path in images]
    # About one photo in twenty of PAD-UFES-20 carries pen marks (58 of 1,026).
    assert 0 < sum(inked) < len(images) // 4
