"""Training runs as the gateway, the CLI and the trainer worker share them: request, queue, rows.

A run is requested with a `TrainingRequest`: each model that has a recipe in the
trainer has its own request, chosen by its `model_name` (`parse_training_request`),
validated here, without torch, so the gateway can refuse a bad one with 422. It is
recorded in `training_runs` and carried out by the trainer worker from its own
`training` queue, with the recipe of that model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal
from uuid import UUID, uuid4

import asyncpg
from celery import Celery
from pydantic import BaseModel, ConfigDict, Field

from skinscreen.core.ham10000 import IMAGE_FOLDERS as HAM10000_IMAGE_FOLDERS
from skinscreen.core.ham10000 import METADATA_FILE as HAM10000_METADATA
from skinscreen.core.pad_ufes import IMAGES_FOLDER, METADATA_FILE

from .queue import DEFAULT_MODEL_NAME, TRAINING_QUEUE, TRAINING_TASK_NAME

# A data source that is not a folder: screenings with a confirmed diagnosis.
CONFIRMED_SCREENINGS: Final = "confirmed-screenings"

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: Final = frozenset({"succeeded", "failed", "cancelled"})

# The trainer's choices; tests/test_training_request.py pins them to the trainer's own.
Backbone = Literal[
    "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "resnet50", "simple-cnn"
]
Balancing = Literal["weighted", "de-mutation", "none"]

# The fusion model is the default model (`queue.DEFAULT_MODEL_NAME`): one name, written once.
FUSION_MODEL_NAME: Final = DEFAULT_MODEL_NAME
DERMOSCOPY_MODEL_NAME: Final = "skinscreen-dermoscopy"


@dataclass(frozen=True)
class DataLayout:
    """What a folder data source of a recipe must hold, so a bad one is refused up front."""

    description: str
    metadata_file: str
    # The images are in any one of these folders.
    image_folders: tuple[str, ...]
    # Whether the recipe also learns from screenings with a confirmed diagnosis.
    takes_confirmed_screenings: bool


PAD_UFES_LAYOUT: Final = DataLayout(
    "PAD-UFES-20", METADATA_FILE, (IMAGES_FOLDER,), takes_confirmed_screenings=True
)
HAM10000_LAYOUT: Final = DataLayout(
    "HAM10000", HAM10000_METADATA, HAM10000_IMAGE_FOLDERS, takes_confirmed_screenings=False
)


class FusionTrainingRequest(BaseModel):
    """A run of skinscreen-fusion's recipe; defaults are those of the shipped model."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    data_layout: ClassVar[DataLayout] = PAD_UFES_LAYOUT

    model_name: Literal["skinscreen-fusion"] = Field(
        FUSION_MODEL_NAME,
        description="The model to train, which chooses the recipe; the candidate is published "
        "under it.",
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


class DermoscopyTrainingRequest(BaseModel):
    """A run of skinscreen-dermoscopy's recipe (the image-only network on HAM10000); defaults
    are those of the shipped model."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    data_layout: ClassVar[DataLayout] = HAM10000_LAYOUT

    model_name: Literal["skinscreen-dermoscopy"] = Field(
        description="The model to train, which chooses the recipe; the candidate is published "
        "under it."
    )
    image_size: Annotated[int, Field(ge=32, le=512)] = 150
    epochs: Annotated[int, Field(ge=1, le=500)] = Field(
        30, description="Class-balanced epochs on the 60 % training part of the split."
    )
    cv_epochs: Annotated[int, Field(ge=1, le=500)] = Field(
        10, description="Class-balanced epochs in each fold of the cross-validation."
    )
    batch_size: Annotated[int, Field(ge=2, le=1024)] = 32
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    folds: Annotated[int, Field(ge=2, le=10)] = Field(
        5, description="Folds of the cross-validation grouped by lesion (the card's figures)."
    )
    recall_target: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.95, description="The threshold is the highest reaching this recall on validation."
    )
    data_sources: list[str] = Field(
        ["ham10000"],
        min_length=1,
        max_length=1,
        description="One folder under TRAINING_DATA_DIR in the HAM10000 layout.",
    )
    max_samples: Annotated[int | None, Field(ge=50)] = Field(
        None, description="Train on a stratified subset of this many images (quick runs)."
    )
    seed: int = 0


TrainingRequest = FusionTrainingRequest | DermoscopyTrainingRequest
# The request of each model that has a recipe; the trainer's recipe registry has the same
# names (tests/test_training_request.py).
REQUESTS: Final[dict[str, type[TrainingRequest]]] = {
    FUSION_MODEL_NAME: FusionTrainingRequest,
    DERMOSCOPY_MODEL_NAME: DermoscopyTrainingRequest,
}
ModelName = Literal["skinscreen-fusion", "skinscreen-dermoscopy"]


class _Recipe(BaseModel):
    """The field that chooses the request's model; the others are that model's to check."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_name: ModelName = FUSION_MODEL_NAME


def parse_training_request(values: Any) -> TrainingRequest:
    """The request of the model `values` names (skinscreen-fusion when it names none).

    Raises pydantic's ValidationError with each problem located at its field, as one
    model's validation would: an unknown model name at `model_name`.
    """
    recipe = _Recipe.model_validate(values)
    return REQUESTS[recipe.model_name].model_validate(values)


class TrainingTask(BaseModel):
    """The message on the training queue: the run to carry out (its config is in its row)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: UUID


def data_source_problems(request: TrainingRequest, data_dir: Path) -> list[tuple[int, str]]:
    """(index, what is wrong) for each of the request's data sources that does not exist,
    cannot be read, or is not in the layout its model's recipe reads."""
    layout = request.data_layout
    problems = []
    seen = set()
    for index, source in enumerate(request.data_sources):
        if source in seen:
            problems.append((index, f"data source {source!r} is listed twice"))
        seen.add(source)
        if source == CONFIRMED_SCREENINGS:
            if not layout.takes_confirmed_screenings:
                problems.append((
                    index,
                    f"{request.model_name} learns from {layout.description} folders only, "
                    f"not from {CONFIRMED_SCREENINGS}",
                ))  # fmt: skip
            continue
        folder = data_dir / source
        if "/" in source or source in {"", ".", ".."}:
            problems.append((index, f"{source!r} is not a folder name under TRAINING_DATA_DIR"))
        elif not _holds(folder, layout):
            available = sorted(
                path.name
                for path in (data_dir.iterdir() if data_dir.is_dir() else [])
                if _holds(path, layout)
            )
            if layout.takes_confirmed_screenings:
                available.append(CONFIRMED_SCREENINGS)
            problems.append((
                index,
                f"data source {source!r} does not exist: no {layout.metadata_file} and "
                f"{' or '.join(f'{name}/' for name in layout.image_folders)} in {folder}; "
                "available: " + ", ".join(available),
            ))  # fmt: skip
    return problems


def _holds(folder: Path, layout: DataLayout) -> bool:
    """Whether `folder` is a data set in `layout`: its metadata file and an image folder."""
    return (folder / layout.metadata_file).is_file() and any(
        (folder / images).is_dir() for images in layout.image_folders
    )


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
