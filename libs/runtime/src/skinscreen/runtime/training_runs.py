"""Training runs as the gateway, the CLI and the trainer worker share them: request, queue, rows.

A run is requested with a `TrainingRequest` (validated here, without torch, so
the gateway can refuse a bad one with 422), recorded in `training_runs`, and
carried out by the trainer worker from its own `training` queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final, Literal
from uuid import UUID, uuid4

import asyncpg
from celery import Celery
from pydantic import BaseModel, ConfigDict, Field

from skinscreen.core.pad_ufes import IMAGES_FOLDER, METADATA_FILE

from .queue import TRAINING_QUEUE, TRAINING_TASK_NAME

# A data source that is not a folder: screenings with a confirmed diagnosis.
CONFIRMED_SCREENINGS: Final = "confirmed-screenings"

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: Final = frozenset({"succeeded", "failed", "cancelled"})

# The trainer's choices; tests/test_training_runs_contract.py pins them to the trainer's own.
Backbone = Literal[
    "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "resnet50", "simple-cnn"
]
Balancing = Literal["weighted", "de-mutation", "none"]


class TrainingRequest(BaseModel):
    """What a training run may be asked to do; defaults are those of the shipped model."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str = Field(
        "skinscreen-fusion",
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="Model name the candidate is published under.",
    )
    backbone: Backbone = "efficientnet-lite0"
    clinical_share: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        0.5, description="lambda: the clinical variables' share of the fused features."
    )
    use_clinical: bool = True
    balancing: Balancing = "weighted"
    epochs: Annotated[int, Field(ge=1, le=500)] = 20
    ensemble: Annotated[int, Field(ge=1, le=10)] = 5
    views: Annotated[int, Field(ge=1, le=64)] = Field(
        8, description="Augmented views cached per photo (CPU mode)."
    )
    test_time_views: Annotated[int, Field(ge=1, le=8)] = Field(
        4, description="Flipped and rotated views of each photo averaged (served too)."
    )
    folds: Annotated[int, Field(ge=2, le=10)] = Field(
        5, description="Outer folds, and inner folds choosing each fold's thresholds."
    )
    repeats: Annotated[int, Field(ge=1, le=10)] = Field(
        3, description="Outer cross-validations with different patient splits."
    )
    image_size: Annotated[int, Field(ge=32, le=1024)] = 224
    recall_target: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.97, description="The cancer threshold is the highest one reaching this recall."
    )
    melanoma_recall_target: Annotated[float | None, Field(gt=0.0, le=1.0)] = Field(
        0.95,
        description="The melanoma threshold is the highest at which the melanoma probability "
        "alone reaches this recall; null: no melanoma rule.",
    )
    data_sources: list[str] = Field(
        ["pad-ufes-20"],
        min_length=1,
        description="Folders under TRAINING_DATA_DIR in the PAD-UFES-20 layout, and/or "
        f"'{CONFIRMED_SCREENINGS}' (screenings with a confirmed diagnosis).",
    )
    max_samples: Annotated[int | None, Field(ge=20)] = Field(
        None, description="Train on a stratified subset of this many photos (quick runs)."
    )
    seed: int = 0


class TrainingTask(BaseModel):
    """The message on the training queue: the run to carry out (its config is in its row)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: UUID


def data_source_problems(sources: list[str], data_dir: Path) -> list[tuple[int, str]]:
    """(index, what is wrong) for each data source that does not exist or cannot be read."""
    problems = []
    seen = set()
    for index, source in enumerate(sources):
        if source in seen:
            problems.append((index, f"data source {source!r} is listed twice"))
        seen.add(source)
        if source == CONFIRMED_SCREENINGS:
            continue
        folder = data_dir / source
        if "/" in source or source in {"", ".", ".."}:
            problems.append((index, f"{source!r} is not a folder name under TRAINING_DATA_DIR"))
        elif not (folder / METADATA_FILE).is_file() or not (folder / IMAGES_FOLDER).is_dir():
            available = sorted(
                path.name
                for path in (data_dir.iterdir() if data_dir.is_dir() else [])
                if (path / METADATA_FILE).is_file()
            )
            problems.append((
                index,
                f"data source {source!r} does not exist: no {METADATA_FILE} and "
                f"{IMAGES_FOLDER}/ in {folder}; available: "
                + ", ".join([*available, CONFIRMED_SCREENINGS]),
            ))  # fmt: skip
    return problems


RUN_COLUMNS: Final = (
    "id, status, config, requested_by, progress, cancel_requested, metrics, model_name,"
    " candidate_version, promoted, promotion_reason, failure_reason, created_at, started_at,"
    " finished_at"
)


async def create_run(
    pool: asyncpg.Pool, celery: Celery, request: TrainingRequest, requested_by: str
) -> UUID:
    """Record a run and enqueue it; if the queue refuses, the row goes too."""
    run_id = uuid4()
    await pool.execute(
        "INSERT INTO training_runs (id, config, requested_by, model_name) VALUES ($1, $2, $3, $4)",
        run_id,
        request.model_dump(mode="json"),
        requested_by,
        request.model_name,
    )
    try:
        celery.send_task(
            TRAINING_TASK_NAME,
            args=[TrainingTask(run_id=run_id).model_dump(mode="json")],
            queue=TRAINING_QUEUE,
        )
    except Exception:
        await pool.execute("DELETE FROM training_runs WHERE id = $1", run_id)
        raise
    return run_id


async def get_run(pool: asyncpg.Pool | asyncpg.Connection, run_id: UUID) -> dict[str, Any] | None:
    row = await pool.fetchrow(f"SELECT {RUN_COLUMNS} FROM training_runs WHERE id = $1", run_id)
    return None if row is None else dict(row)


async def request_cancel(pool: asyncpg.Pool, run_id: UUID) -> dict[str, Any] | None:
    """Cancel a queued run at once; ask a running one to stop at its next epoch."""
    row = await pool.fetchrow(
        "UPDATE training_runs SET"
        " status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,"
        " finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END,"
        " cancel_requested = status IN ('queued', 'running')"
        f" WHERE id = $1 RETURNING {RUN_COLUMNS}",
        run_id,
    )
    return None if row is None else dict(row)
