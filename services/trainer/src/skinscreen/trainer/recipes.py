"""Every served model's production recipe, found by the model's name.

A recipe is how one model is made from data: its configuration (the options
of `skinscreen-trainer train --model <name>`), the configuration a training
run requested through the API becomes, the data it reads, and one run that
trains, evaluates, exports and describes the model in its card. The trainer
worker, the command line and the API pick a recipe by model name from
`RECIPES`, filled by `@register_recipe`: adding a model is adding a recipe,
not another branch. The API's requests (`skinscreen.runtime.training_runs.REQUESTS`)
have the same names; tests/test_training_request.py pins them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import asyncpg
from pydantic import BaseModel

from skinscreen.core.card import ModelCard
from skinscreen.runtime.blobs import BlobStore
from skinscreen.runtime.training_runs import (
    DERMOSCOPY_MODEL_NAME,
    FUSION_MODEL_NAME,
    DermoscopyTrainingRequest,
    FusionTrainingRequest,
)
from skinscreen.trainer.config import TrainConfig, train_config
from skinscreen.trainer.dermoscopy_training import DermoscopyTrainConfig, run_dermoscopy_training
from skinscreen.trainer.pipeline import run_training
from skinscreen.trainer.sources import load_sources

RequestT = TypeVar("RequestT", bound=BaseModel)
ConfigT = TypeVar("ConfigT", bound=BaseModel)
# (fitting, epoch, epochs) after each epoch: the worker's progress, and where it cancels.
OnEpoch = Callable[[str, int, int], None]
# (stage, details): the worker's progress row.
Progress = Callable[..., None]


@dataclass
class TrainedModel:
    """What a recipe's run made: its run folder (model.onnx, card.json, report), its card,
    where it was published (when a store was given), and a summary for people."""

    run_dir: Path
    card: ModelCard
    published: Path | None
    summary: list[str]


class Recipe(ABC, Generic[RequestT, ConfigT]):
    name: ClassVar[str]
    config_type: ClassVar[type[BaseModel]]

    @abstractmethod
    def config_from_request(self, request: RequestT, data_dir: Path) -> ConfigT:
        """The full configuration of a run requested through the API (or `runs submit`)."""

    async def load_data(
        self,
        request: RequestT,
        data_dir: Path,
        connection: asyncpg.Pool,
        blobs: BlobStore,
    ) -> Any:
        """The data a requested run trains on, when it is more than the configuration's
        folder (None: the run reads its configuration's folder itself)."""
        return None

    @abstractmethod
    def train(
        self,
        config: ConfigT,
        runs: Path,
        store: Path | None,
        *,
        data: Any = None,
        on_epoch: OnEpoch | None = None,
        progress: Progress | None = None,
    ) -> TrainedModel:
        """One run into a new folder under `runs`; published into `store` if given."""


RECIPES: dict[str, Recipe[Any, Any]] = {}

RecipeT = TypeVar("RecipeT", bound=type[Recipe[Any, Any]])


def register_recipe(cls: RecipeT) -> RecipeT:
    """Class decorator: make `cls` the recipe of the model `cls.name`."""
    if cls.name in RECIPES:
        raise ValueError(f"a recipe for {cls.name} is registered already")
    RECIPES[cls.name] = cls()
    return cls


def get_recipe(name: str) -> Recipe[Any, Any]:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(
            f"no recipe makes a model named {name!r}; recipes: {', '.join(sorted(RECIPES))}"
        ) from None


@register_recipe
class FusionRecipe(Recipe[FusionTrainingRequest, TrainConfig]):
    """skinscreen-fusion: photo and clinical answers on PAD-UFES-20 (and confirmed screenings),
    nested, repeated, patient-grouped cross-validation, then a fit on all the data."""

    name = FUSION_MODEL_NAME
    config_type = TrainConfig

    def config_from_request(self, request: FusionTrainingRequest, data_dir: Path) -> TrainConfig:
        return train_config(request, data_dir)

    async def load_data(
        self,
        request: FusionTrainingRequest,
        data_dir: Path,
        connection: asyncpg.Pool,
        blobs: BlobStore,
    ) -> Any:
        return await load_sources(request.data_sources, data_dir, connection, blobs)

    def train(
        self,
        config: TrainConfig,
        runs: Path,
        store: Path | None,
        *,
        data: Any = None,
        on_epoch: OnEpoch | None = None,
        progress: Progress | None = None,
    ) -> TrainedModel:
        if progress is not None:
            progress("caching and cross-validating", folds=config.folds)
        result = run_training(config, runs, store, dataset=data, on_epoch=on_epoch)
        metrics, flagged = result.estimates.metrics, result.estimates.flagged_by_diagnosis
        melanoma = "none" if result.rule.melanoma is None else f"{result.rule.melanoma:.4f}"
        summary = [
            "nested cross-validation (95 % patient bootstrap intervals): "
            + ", ".join(
                f"{key} {metrics[key].value:.3f} ({metrics[key].low:.3f}-{metrics[key].high:.3f})"
                for key in ("roc_auc", "recall", "specificity", "balanced_accuracy")
            ),
            "called suspicious, by diagnosis: "
            + ", ".join(f"{key} {value.value:.3f}" for key, value in flagged.items()),
            f"thresholds: cancer {result.rule.cancer:.4f}, melanoma {melanoma}",
            f"total time: {result.timings['total_s']:.0f} s",
        ]
        return TrainedModel(result.run_dir, result.card, result.published, summary)


@register_recipe
class DermoscopyRecipe(Recipe[DermoscopyTrainingRequest, DermoscopyTrainConfig]):
    """skinscreen-dermoscopy: the photo alone, the dermoscopy paper's 3-block network on
    HAM10000; threshold and epoch from a lesion-grouped validation part, scored on the
    held-out test part, cross-validated by lesion for its card."""

    name = DERMOSCOPY_MODEL_NAME
    config_type = DermoscopyTrainConfig

    def config_from_request(
        self, request: DermoscopyTrainingRequest, data_dir: Path
    ) -> DermoscopyTrainConfig:
        (source,) = request.data_sources
        return DermoscopyTrainConfig(
            data=data_dir / source,
            name=request.model_name,
            image_size=request.image_size,
            epochs=request.epochs,
            cv_epochs=request.cv_epochs,
            batch_size=request.batch_size,
            learning_rate=request.learning_rate,
            folds=request.folds,
            seed=request.seed,
            recall_target=request.recall_target,
            max_samples=request.max_samples,
        )

    def train(
        self,
        config: DermoscopyTrainConfig,
        runs: Path,
        store: Path | None,
        *,
        data: Any = None,
        on_epoch: OnEpoch | None = None,
        progress: Progress | None = None,
    ) -> TrainedModel:
        if progress is not None:
            progress("fitting on the split and cross-validating", folds=config.folds)
        result = run_dermoscopy_training(config, runs, store, on_epoch=on_epoch)
        cv = result.card.cross_validation
        summary = [
            "held-out test part: "
            + ", ".join(
                f"{label} ROC AUC {scores['roc_auc']:.3f}, sensitivity {scores['recall']:.3f}, "
                f"specificity {scores['specificity']:.3f}"
                for label, scores in (
                    ("at 0.5", result.test["at_0.5"]),
                    ("at the threshold", result.test["at_screening_threshold"]),
                )
            ),
            f"cross-validation ({config.folds} folds grouped by lesion): "
            + ", ".join(
                f"{key} {cv[key].mean:.3f} ± {cv[key].std:.3f}"
                for key in ("roc_auc", "recall", "specificity", "balanced_accuracy")
            ),
            f"threshold: {result.card.decision_threshold.value:.4f}",
            f"total time: {result.timings['total_s']:.0f} s",
        ]
        return TrainedModel(result.run_dir, result.card, result.published, summary)
