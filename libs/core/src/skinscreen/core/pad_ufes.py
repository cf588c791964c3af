"""PAD-UFES-20 loading: metadata rows -> (photo, 22-variable clinical vector, label, patient).

Works on the official release (full-size PNG files) and on the shared copy
(JPEG files under the same stem) unchanged. `diagnostic` becomes the label
and `biopsed` is never read: both leak the answer.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

import numpy as np

from skinscreen.core.clinical import REGIONS, SYMPTOMS, ClinicalInput, Region

CANCER_DIAGNOSES: Final = frozenset({"BCC", "SCC", "MEL"})
BENIGN_DIAGNOSES: Final = frozenset({"ACK", "SEK", "NEV"})
DIAGNOSES: Final = tuple(sorted(CANCER_DIAGNOSES | BENIGN_DIAGNOSES))

METADATA_FILE: Final = "metadata.csv"
IMAGES_FOLDER: Final = "images"
REQUIRED_COLUMNS: Final = (
    "patient_id",
    "lesion_id",
    "age",
    "region",
    "diagnostic",
    *SYMPTOMS,
    "img_id",
)
# The official release ships PNG; the shared copy JPEG under the same stem.
IMAGE_SUFFIXES: Final = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


class DataError(ValueError):
    """The data set on disk is not what the loader can use; the message says why."""


@dataclass(frozen=True)
class Sample:
    image_path: Path
    patient_id: str
    lesion_id: str
    diagnostic: str
    clinical: ClinicalInput

    @property
    def label(self) -> int:
        """1 for skin cancer (BCC, SCC, MEL), 0 otherwise."""
        return int(self.diagnostic in CANCER_DIAGNOSES)


@dataclass
class Dataset:
    samples: list[Sample]
    root: Path
    skipped_missing_image: int = 0
    diagnoses: Counter[str] = field(default_factory=Counter)
    # Where the samples came from, for model cards; one source unless datasets were merged.
    source: str = ""

    @property
    def description(self) -> str:
        return self.source or f"PAD-UFES-20 at {self.root}"

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([sample.label for sample in self.samples], dtype=np.int64)

    @property
    def diagnosis_indices(self) -> np.ndarray:
        """Position of each photo's diagnosis in DIAGNOSES."""
        return np.array(
            [DIAGNOSES.index(sample.diagnostic) for sample in self.samples], dtype=np.int64
        )

    @property
    def groups(self) -> np.ndarray:
        return np.array([sample.patient_id for sample in self.samples])

    @property
    def clinical(self) -> np.ndarray:
        return np.stack([sample.clinical.to_vector() for sample in self.samples])

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        chosen = [self.samples[int(index)] for index in indices]
        return Dataset(
            chosen,
            self.root,
            self.skipped_missing_image,
            Counter(sample.diagnostic for sample in chosen),
            self.source,
        )

    def fingerprint(self) -> str:
        """sha256 over the image ids, labels and clinical vectors actually used.

        Identifies the data a model saw without hashing gigabytes of pixels;
        the same rows in the same order always give the same value.
        """
        digest = hashlib.sha256()
        for sample in self.samples:
            digest.update(sample.image_path.stem.encode())
            digest.update(sample.diagnostic.encode())
            digest.update(sample.clinical.to_vector().tobytes())
        return "sha256:" + digest.hexdigest()


def _symptom(value: str, column: str, row: int) -> bool | None:
    text = value.strip().upper()
    if text == "TRUE":
        return True
    if text == "FALSE":
        return False
    if text in {"UNK", ""}:
        return None
    raise DataError(
        f"{METADATA_FILE} row {row}: column {column!r} is {value!r}; "
        "allowed are True, False, UNK or empty"
    )


def _clinical(record: dict[str, str], row: int) -> ClinicalInput:
    try:
        age = round(float(record["age"]))
    except ValueError:
        raise DataError(
            f"{METADATA_FILE} row {row}: age {record['age']!r} is not a number"
        ) from None
    region = record["region"].strip().upper()
    return ClinicalInput(
        age=age,
        region=Region(region) if region in REGIONS else Region.OTHER,
        **{symptom: _symptom(record[symptom], symptom, row) for symptom in SYMPTOMS},
    )


def _find_image(images: Path, img_id: str) -> Path | None:
    stem = Path(img_id).stem
    for suffix in IMAGE_SUFFIXES:
        candidate = images / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def check_data_folder(root: Path, metadata: Path, dataset: str, holds: str) -> None:
    """Refuse a missing data folder or metadata file, saying what the folder should hold."""
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist; pass the {dataset} folder that holds {holds}"
        )
    if not metadata.is_file():
        raise DataError(f"{metadata} does not exist; a {dataset} folder holds {holds}")


def metadata_rows(
    handle: TextIO, metadata: Path, required: Sequence[str]
) -> Iterator[tuple[int, dict[str, str]]]:
    """A metadata CSV's records with their row numbers (the header is row 1), once every
    required column is known to be there."""
    reader = csv.DictReader(handle)
    missing = [column for column in required if column not in (reader.fieldnames or [])]
    if missing:
        raise DataError(
            f"{metadata} lacks the column(s) {', '.join(missing)}; required are "
            f"{', '.join(required)}"
        )
    return enumerate(reader, start=2)


def load_pad_ufes(root: Path) -> Dataset:
    """Read PAD-UFES-20 from `root` (holding metadata.csv and images/).

    Rows whose photo is not on disk are skipped and counted in
    `skipped_missing_image`.
    """
    root = Path(root)
    metadata = root / METADATA_FILE
    images = root / IMAGES_FOLDER
    check_data_folder(root, metadata, "PAD-UFES-20", f"{METADATA_FILE} and {IMAGES_FOLDER}/")
    if not images.is_dir():
        raise DataError(
            f"{images} does not exist; the photos belong in {IMAGES_FOLDER}/ beside {METADATA_FILE}"
        )

    samples: list[Sample] = []
    skipped = 0
    with metadata.open(newline="", encoding="utf-8") as handle:
        for row, record in metadata_rows(handle, metadata, REQUIRED_COLUMNS):
            diagnostic = record["diagnostic"].strip().upper()
            if diagnostic not in DIAGNOSES:
                raise DataError(
                    f"{metadata} row {row}: diagnostic {record['diagnostic']!r} is "
                    f"not one of {', '.join(DIAGNOSES)}"
                )
            image_path = _find_image(images, record["img_id"])
            if image_path is None:
                skipped += 1
                continue
            samples.append(
                Sample(
                    image_path=image_path,
                    patient_id=record["patient_id"],
                    lesion_id=record["lesion_id"],
                    diagnostic=diagnostic,
                    clinical=_clinical(record, row),
                )
            )
    if not samples:
        raise DataError(f"none of the {skipped} photos named in {metadata} is in {images}")
    # A stable order, whatever the order of the CSV rows: reproducible folds.
    samples.sort(key=lambda sample: sample.image_path.stem)
    return Dataset(samples, root, skipped, Counter(sample.diagnostic for sample in samples))
