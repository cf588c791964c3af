"""The PAD-UFES-20 loader: the real shared copy, the official PNG layout, and bad folders."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from skinscreen.core.pad_ufes import DataError, load_pad_ufes
from tests.conftest import official_layout_copy

pytestmark = pytest.mark.data


def test_shared_copy_loads_with_missing_photos_counted(pad_ufes_dir: Path) -> None:
    dataset = load_pad_ufes(pad_ufes_dir)
    # The counts ../shared/data/README.md gives for this copy.
    assert len(dataset) == 1026
    assert dataset.skipped_missing_image == 2298 - 1026
    assert dict(dataset.diagnoses) == {
        "BCC": 341,
        "ACK": 270,
        "NEV": 173,
        "SEK": 139,
        "SCC": 66,
        "MEL": 37,
    }
    assert int(dataset.labels.sum()) == 341 + 66 + 37
    assert dataset.clinical.shape == (1026, 22)
    assert len(set(dataset.groups)) == 748


def test_official_png_layout_loads_unchanged(pad_ufes_dir: Path, tmp_path: Path) -> None:
    chosen = official_layout_copy(pad_ufes_dir, tmp_path, rows=6)
    dataset = load_pad_ufes(tmp_path)
    assert len(dataset) == 6
    assert dataset.skipped_missing_image == 0
    assert {sample.image_path.suffix for sample in dataset.samples} == {".png"}
    assert {sample.image_path.name for sample in dataset.samples} == {r["img_id"] for r in chosen}


def test_leaking_columns_are_never_inputs(pad_ufes_dir: Path, tmp_path: Path) -> None:
    official_layout_copy(pad_ufes_dir, tmp_path, rows=6)
    before = load_pad_ufes(tmp_path).clinical
    metadata = tmp_path / "metadata.csv"
    with metadata.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fieldnames = list(reader.fieldnames or [])
        rows = list(reader)
    for row in rows:
        row["biopsed"] = "True" if row["biopsed"] == "False" else "False"
    with metadata.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    np.testing.assert_array_equal(load_pad_ufes(tmp_path).clinical, before)


def test_missing_folder_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist; pass the PAD-UFES-20 folder"):
        load_pad_ufes(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"metadata.csv does not exist"):
        load_pad_ufes(tmp_path)


def test_missing_columns_are_named(pad_ufes_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "metadata.csv").write_text("patient_id,lesion_id,age,img_id\nPAT_1,1,50,a.png\n")
    with pytest.raises(DataError) as raised:
        load_pad_ufes(tmp_path)
    message = str(raised.value)
    assert "lacks the column(s) region, diagnostic, itch" in message
    assert "required are patient_id" in message


def test_bad_symptom_value_names_row_and_column(pad_ufes_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(
        pad_ufes_dir / "images",
        tmp_path / "images",
        ignore=lambda _, names: [n for n in names if not n.startswith("PAT_46_881")],
    )
    header = (pad_ufes_dir / "metadata.csv").read_text().splitlines()[0]
    row = (
        "PAT_46,881,False,False,POMERANIA,POMERANIA,55,False,FEMALE,True,True,True,True,3.0,"
        "NECK,6.0,5.0,BCC,maybe,True,False,True,True,True,PAT_46_881_939.png,True"
    )
    (tmp_path / "metadata.csv").write_text(header + "\n" + row + "\n")
    with pytest.raises(DataError, match=r"row 2: column 'itch' is 'maybe'; allowed are True"):
        load_pad_ufes(tmp_path)
