"""Training data from the sources a run names: PAD-UFES-20 folders and confirmed screenings."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import asyncpg
from pillow_heif import register_heif_opener

from skinscreen.core.clinical import ClinicalInput
from skinscreen.core.pad_ufes import DIAGNOSES, DataError, Dataset, Sample, load_pad_ufes
from skinscreen.runtime import screenings
from skinscreen.runtime.blobs import BlobStore
from skinscreen.runtime.training_runs import CONFIRMED_SCREENINGS

# Screenings' photos may be HEIC/HEIF, which the gateway accepts from iPhones.
register_heif_opener()

log = logging.getLogger(__name__)

# Kept apart from PAD-UFES-20's PAT_* ids, so grouped folds never merge two people.
PATIENT_PREFIX = "screening:"


async def confirmed_screenings(
    connection: asyncpg.Pool | asyncpg.Connection, blobs: BlobStore
) -> tuple[list[Sample], Counter[str]]:
    """Screenings with a confirmed diagnosis, as samples; and what was left out, and why."""
    rows = await screenings.confirmed(connection)
    samples, left_out = [], Counter[str]()
    for row in rows:
        if row["diagnosis"] not in DIAGNOSES:
            # OTHER: whether it is a cancer is not recorded, so it cannot be a label.
            left_out["diagnosis OTHER"] += 1
            continue
        if row["clinical"] is None:
            # Sent to an image-only model without answers: the fusion model cannot learn from it.
            left_out["no clinical answers"] += 1
            continue
        path = blobs.path(row["image_key"])
        if not path.is_file():
            left_out["photo missing from the blob store"] += 1
            continue
        samples.append(
            Sample(
                image_path=path,
                patient_id=PATIENT_PREFIX + row["patient_id"],
                lesion_id=str(row["id"]),
                diagnostic=row["diagnosis"],
                clinical=ClinicalInput.model_validate(row["clinical"]),
            )
        )
    return samples, left_out


async def load_sources(
    sources: list[str], data_dir: Path, connection: asyncpg.Pool, blobs: BlobStore
) -> Dataset:
    """One data set from every source, in the order named; refuses an empty result."""
    samples: list[Sample] = []
    skipped = 0
    described = []
    for source in sources:
        if source == CONFIRMED_SCREENINGS:
            confirmed, left_out = await confirmed_screenings(connection, blobs)
            samples.extend(confirmed)
            extra = "".join(f", {count} left out ({why})" for why, count in left_out.items())
            described.append(f"{len(confirmed)} confirmed screenings{extra}")
            continue
        dataset = load_pad_ufes(data_dir / source)
        samples.extend(dataset.samples)
        skipped += dataset.skipped_missing_image
        described.append(f"PAD-UFES-20 at {dataset.root} ({len(dataset)} photos)")
    if not samples:
        raise DataError("the data sources " + ", ".join(sources) + " hold no usable sample")
    log.info("training data: %s", "; ".join(described))
    return Dataset(
        samples,
        data_dir,
        skipped,
        Counter(sample.diagnostic for sample in samples),
        " + ".join(described),
    )
