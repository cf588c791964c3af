"""The training request the gateway validates (no torch there) agrees with the trainer's config."""

from __future__ import annotations

import typing
from pathlib import Path

from skinscreen.core.pad_ufes import DIAGNOSES
from skinscreen.gateway.schemas import Diagnosis
from skinscreen.runtime.training_runs import Backbone, Balancing, TrainingRequest
from skinscreen.trainer.balancing import Balancing as TrainerBalancing
from skinscreen.trainer.config import TrainConfig, train_config
from skinscreen.trainer.model import BackboneName


def test_choices_are_the_trainers() -> None:
    assert typing.get_args(Backbone) == typing.get_args(BackboneName)
    assert typing.get_args(Balancing) == typing.get_args(TrainerBalancing)


def test_defaults_are_the_shipped_configuration() -> None:
    request = TrainingRequest()
    config = train_config(request, Path("data"))
    defaults = TrainConfig(data=Path("data/pad-ufes-20"))
    assert config == defaults


def test_diagnoses_are_the_data_sets_labels_and_other() -> None:
    assert [item.value for item in Diagnosis] == [*DIAGNOSES, "OTHER"]
