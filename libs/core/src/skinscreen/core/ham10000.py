"""HAM10000 loading: metadata rows -> (dermoscopy image, benign/malignant label, lesion).

Works on the shared copy (`images/`) and on the official release (the images
split over `HAM10000_images_part_1/` and `HAM10000_images_part_2/`) unchanged.
Several images show the same lesion: splits must be grouped by `lesion_id`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from skinscreen.core.pad_ufes import DataError, check_data_folder, metadata_rows

MALIGNANT_DIAGNOSES: Final = frozenset({"mel", "bcc", "akiec"})
BENIGN_DIAGNOSES: Final = frozenset({"nv", "bkl", "df", "vasc"})
DIAGNOSES: Final = tuple(sorted(MALIGNANT_DIAGNOSES | BENIGN_DIAGNOSES))

METADATA_FILE: Final = "HAM10000_metadata.csv"
# The shared copy keeps every image in one folder; the official release in two.
IMAGE_FOLDERS: Final = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2")
IMAGE_SUFFIXES: Final = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
REQUIRED_COLUMNS: Final = ("lesion_id", "image_id", "dx")


@dataclass(frozen=True)
class DermoscopyImage:
    image_path: Path
    image_id: str
    lesion_id: str
    diagnosis: str

    @property
    def label(self) -> int:
        """1 for malignant (mel, bcc, akiec), 0 for benign (nv, bkl, df, vasc)."""
        return int(self.diagnosis in MALIGNANT_DIAGNOSES)


@dataclass
class DermoscopyDataset:
    samples: list[DermoscopyImage]
    root: Path
    skipped_missing_image: int = 0
    diagnoses: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([sample.label for sample in self.samples], dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        """The lesion of each image: the unit that a split must keep together."""
        return np.array([sample.lesion_id for sample in self.samples])

    def subset(self, indices: Sequence[int] | np.ndarray) -> DermoscopyDataset:
        chosen = [self.samples[int(index)] for index in indices]
        return DermoscopyDataset(
            chosen,
            self.root,
            self.skipped_missing_image,
            Counter(sample.diagnosis for sample in chosen),
        )

    def fingerprint(self) -> str:
        """sha256 over the image ids and diagnoses used, in order (see pad_ufes.Dataset)."""
        digest = hashlib.sha256()
        for sample in self.samples:
            digest.update(sample.image_id.encode())
            digest.update(sample.diagnosis.encode())
        return "sha256:" + digest.hexdigest()


def _image_index(root: Path) -> dict[str, Path]:
    """Every image file under the known folders, by its stem (the image_id)."""
    found: dict[str, Path] = {}
    for folder in IMAGE_FOLDERS:
        if not (root / folder).is_dir():
            continue
        for path in (root / folder).iterdir():
            if path.suffix in IMAGE_SUFFIXES:
                found.setdefault(path.stem, path)
    return found


def load_ham10000(root: Path) -> DermoscopyDataset:
    """Read HAM10000 from `root` (holding HAM10000_metadata.csv and the image folder(s)).

    Rows whose image is not on disk are skipped and counted in `skipped_missing_image`.
    """
    root = Path(root)
    metadata = root / METADATA_FILE
    check_data_folder(root, metadata, "HAM10000", f"{METADATA_FILE} and images/")
    images = _image_index(root)
    if not images:
        raise DataError(
            f"no image found in {root}; the images belong in one of "
            f"{', '.join(f'{folder}/' for folder in IMAGE_FOLDERS)} beside {METADATA_FILE}"
        )

    samples: list[DermoscopyImage] = []
    skipped = 0
    with metadata.open(newline="", encoding="utf-8") as handle:
        for row, record in metadata_rows(handle, metadata, REQUIRED_COLUMNS):
            diagnosis = record["dx"].strip().lower()
            if diagnosis not in DIAGNOSES:
                raise DataError(
                    f"{metadata} row {row}: dx {record['dx']!r} is not one of "
                    f"{', '.join(DIAGNOSES)}"
                )
            image_id = record["image_id"].strip()
            path = images.get(image_id)
            if path is None:
                skipped += 1
                continue
            samples.append(DermoscopyImage(path, image_id, record["lesion_id"].strip(), diagnosis))
    if not samples:
        raise DataError(f"none of the {skipped} images named in {metadata} is under {root}")
    # A stable order, whatever the order of the CSV rows: reproducible splits.
    samples.sort(key=lambda sample: sample.image_id)
    return DermoscopyDataset(samples, root, skipped, Counter(s.diagnosis for s in samples))
