"""Shared fixtures: where the real data lives, and skipping cleanly when it is absent."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from skinscreen.core.ham10000 import METADATA_FILE as HAM10000_METADATA

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PAD_UFES = SHARED_DATA / "pad-ufes-20"
HAM10000 = SHARED_DATA / "ham10000"

# The API form of the clinical answers, as docs/DESIGN.md gives it.
DESIGN_EXAMPLE: dict[str, object] = {
    "age": 62,
    "region": "FACE",
    "itch": True,
    "grew": None,
    "hurt": False,
    "changed": False,
    "bleed": True,
    "elevation": True,
}


@pytest.fixture(scope="session")
def pad_ufes_dir() -> Path:
    if not (PAD_UFES / "metadata.csv").is_file():
        pytest.skip(f"real PAD-UFES-20 data not found at {PAD_UFES}")
    return PAD_UFES


@pytest.fixture(scope="session")
def ham10000_dir() -> Path:
    if not (HAM10000 / HAM10000_METADATA).is_file():
        pytest.skip(f"real HAM10000 data not found at {HAM10000}")
    return HAM10000


def official_layout_copy(source: Path, target: Path, rows: int) -> list[dict[str, str]]:
    """A small copy in the official release's layout: PNG photos under the CSV's img_id."""
    (target / "images").mkdir(parents=True)
    with (source / "metadata.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        fieldnames = list(reader.fieldnames or [])
        records = [
            record
            for record in reader
            if (source / "images" / (Path(record["img_id"]).stem + ".jpg")).is_file()
        ]
    chosen = records[:rows]
    for record in chosen:
        with Image.open(source / "images" / (Path(record["img_id"]).stem + ".jpg")) as image:
            image.save(target / "images" / record["img_id"])
    with (target / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(chosen)
    return chosen


def missing_data_arguments(arguments: list[str], tmp_path: Path) -> list[str]:
    """A CLI test's arguments: `{missing}` becomes a data folder that does not exist, which
    is also the --data given when the arguments name none."""
    data = str(tmp_path / "no-such-folder")
    arguments = [argument.replace("{missing}", data) for argument in arguments]
    return arguments if "--data" in arguments else ["--data", data, *arguments]
