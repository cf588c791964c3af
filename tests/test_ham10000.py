"""The HAM10000 loader: benign/malignant labels, lesions kept together, both folder layouts."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest

from skinscreen.core.ham10000 import (
    BENIGN_DIAGNOSES,
    MALIGNANT_DIAGNOSES,
    METADATA_FILE,
    load_ham10000,
)
from skinscreen.core.pad_ufes import DataError
from skinscreen.trainer.dermoscopy_training import lesion_split
from skinscreen.trainer.evaluation import patient_folds


def test_the_paper_splits_the_seven_diagnoses_into_malignant_and_benign() -> None:
    assert {"mel", "bcc", "akiec"} == MALIGNANT_DIAGNOSES
    assert {"nv", "bkl", "df", "vasc"} == BENIGN_DIAGNOSES


@pytest.mark.data
def test_real_data_loads_with_its_labels(ham10000_dir: Path) -> None:
    dataset = load_ham10000(ham10000_dir)
    assert len(dataset) == 8009
    assert dataset.skipped_missing_image == 0
    assert dataset.diagnoses == Counter(
        nv=5364, mel=894, bkl=875, bcc=408, akiec=260, vasc=116, df=92
    )
    labels = dataset.labels
    assert int(labels.sum()) == 894 + 408 + 260
    for sample, label in zip(dataset.samples, labels, strict=True):
        assert label == (sample.diagnosis in MALIGNANT_DIAGNOSES)
        assert sample.image_path.stem == sample.image_id
    assert len(set(dataset.groups)) == 5975
    # A stable order: the same rows, the same fingerprint, whatever the CSV's order.
    assert dataset.fingerprint() == load_ham10000(ham10000_dir).fingerprint()


@pytest.mark.data
def test_splits_keep_every_lesion_on_one_side(ham10000_dir: Path) -> None:
    dataset = load_ham10000(ham10000_dir)
    labels, groups = dataset.labels, dataset.groups
    split = lesion_split(labels, groups, seed=0)
    parts = (split.train, split.validation, split.test)
    assert sum(len(part) for part in parts) == len(dataset)
    train_lesions, validation_lesions, test_lesions = (set(groups[part]) for part in parts)
    assert not train_lesions & validation_lesions
    assert not train_lesions & test_lesions
    assert not validation_lesions & test_lesions
    for part, share in zip(parts, (0.6, 0.2, 0.2), strict=True):
        assert len(part) / len(dataset) == pytest.approx(share, abs=0.02)
        assert labels[part].mean() == pytest.approx(labels.mean(), abs=0.02)
    for train, test in patient_folds(labels, groups, 5, seed=0):
        assert not set(groups[train]) & set(groups[test])
    # Lesions with several images exist, so grouping is not a formality.
    assert len(set(groups)) < len(groups)


@pytest.mark.data
def test_official_layout_and_missing_images(ham10000_dir: Path, tmp_path: Path) -> None:
    with (ham10000_dir / METADATA_FILE).open(newline="") as handle:
        reader = csv.DictReader(handle)
        fieldnames = list(reader.fieldnames or [])
        records = [next(reader) for _ in range(6)]
    # The official release splits the images over two folders; one row has no image.
    for index, record in enumerate(records[:5]):
        folder = tmp_path / f"HAM10000_images_part_{1 + index % 2}"
        folder.mkdir(exist_ok=True)
        name = f"{record['image_id']}.jpg"
        shutil.copyfile(ham10000_dir / "images" / name, folder / name)
    with (tmp_path / METADATA_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(records)
    dataset = load_ham10000(tmp_path)
    assert len(dataset) == 5
    assert dataset.skipped_missing_image == 1
    assert [sample.image_id for sample in dataset.samples] == sorted(
        record["image_id"] for record in records[:5]
    )
    expected = {r["image_id"]: int(r["dx"] in MALIGNANT_DIAGNOSES) for r in records[:5]}
    assert list(dataset.labels) == [expected[sample.image_id] for sample in dataset.samples]


def test_a_folder_that_is_not_ham10000_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; pass the HAM10000 folder"):
        load_ham10000(tmp_path / "missing")
    with pytest.raises(DataError, match=f"{METADATA_FILE} does not exist"):
        load_ham10000(tmp_path)
    (tmp_path / METADATA_FILE).write_text("lesion_id,image_id\nHAM_1,ISIC_1\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ISIC_1.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="lacks the column"):
        load_ham10000(tmp_path)
    (tmp_path / METADATA_FILE).write_text("lesion_id,image_id,dx\nHAM_1,ISIC_1,scc\n")
    with pytest.raises(DataError, match=r"row 2: dx 'scc' is not one of akiec, bcc"):
        load_ham10000(tmp_path)
