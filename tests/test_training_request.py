"""The training requests the gateway validates (no torch there) agree with the trainer: one
request per model that has a recipe, each becoming that recipe's configuration."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from skinscreen.core.pad_ufes import DIAGNOSES
from skinscreen.gateway.schemas import Diagnosis
from skinscreen.runtime.training_runs import (
    REQUESTS,
    Backbone,
    Balancing,
    DermoscopyTrainingRequest,
    FusionTrainingRequest,
    ModelName,
    data_source_problems,
    parse_training_request,
)
from skinscreen.trainer.balancing import Balancing as TrainerBalancing
from skinscreen.trainer.config import TrainConfig, train_config
from skinscreen.trainer.dermoscopy_training import DermoscopyTrainConfig
from skinscreen.trainer.model import BackboneName
from skinscreen.trainer.recipes import RECIPES, get_recipe
from tests.conftest import SHARED_DATA


def test_choices_are_the_trainers() -> None:
    assert typing.get_args(Backbone) == typing.get_args(BackboneName)
    assert typing.get_args(Balancing) == typing.get_args(TrainerBalancing)


def test_every_request_has_a_recipe_and_every_recipe_a_request() -> None:
    assert set(REQUESTS) == set(RECIPES) == set(typing.get_args(ModelName))
    for name, request in REQUESTS.items():
        assert request.model_fields["model_name"].annotation == typing.Literal[name]
        assert get_recipe(name).name == name


def test_defaults_are_the_shipped_configuration() -> None:
    request = parse_training_request({})
    assert isinstance(request, FusionTrainingRequest)
    assert request == FusionTrainingRequest()
    config = train_config(request, Path("data"))
    defaults = TrainConfig(data=Path("data/pad-ufes-20"))
    assert config == defaults
    assert get_recipe(request.model_name).config_from_request(request, Path("data")) == defaults


def test_the_image_only_models_defaults_are_its_recipes() -> None:
    request = parse_training_request({"model_name": "skinscreen-dermoscopy"})
    assert isinstance(request, DermoscopyTrainingRequest)
    config = get_recipe(request.model_name).config_from_request(request, Path("data"))
    assert config == DermoscopyTrainConfig(data=Path("data/ham10000"))


@pytest.mark.parametrize(
    ("values", "location", "words"),
    [
        ({"model_name": "skinscreen-other"}, ("model_name",), "'skinscreen-fusion' or"),
        # The fusion recipe's knobs are not the image-only model's, and the other way round.
        ({"model_name": "skinscreen-dermoscopy", "backbone": "resnet50"}, ("backbone",), "Extra"),
        ({"cv_epochs": 3}, ("cv_epochs",), "Extra inputs are not permitted"),
        (
            {"model_name": "skinscreen-dermoscopy", "max_samples": 20},
            ("max_samples",),
            "greater than or equal to 50",
        ),
        (
            {"model_name": "skinscreen-dermoscopy", "data_sources": ["a", "b"]},
            ("data_sources",),
            "at most 1 item",
        ),
    ],
)
def test_each_problem_is_located_at_its_field(
    values: dict[str, object], location: tuple[str, ...], words: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_training_request(values)
    (problem,) = raised.value.errors()
    assert problem["loc"] == location
    assert words in problem["msg"]


def test_data_sources_are_checked_against_the_recipes_layout() -> None:
    if not (SHARED_DATA / "ham10000").is_dir() or not (SHARED_DATA / "pad-ufes-20").is_dir():
        pytest.skip(f"real data sets not found in {SHARED_DATA}")
    dermoscopy = parse_training_request({"model_name": "skinscreen-dermoscopy"})
    assert data_source_problems(dermoscopy, SHARED_DATA) == []
    wrong = DermoscopyTrainingRequest(
        model_name="skinscreen-dermoscopy", data_sources=["pad-ufes-20"]
    )
    ((index, message),) = data_source_problems(wrong, SHARED_DATA)
    assert index == 0
    assert "no HAM10000_metadata.csv and images/ or HAM10000_images_part_1/" in message
    assert message.endswith("available: ham10000")
    confirmed = DermoscopyTrainingRequest(
        model_name="skinscreen-dermoscopy", data_sources=["confirmed-screenings"]
    )
    ((_, message),) = data_source_problems(confirmed, SHARED_DATA)
    assert "learns from HAM10000 folders only" in message
    fusion = parse_training_request({"data_sources": ["ham10000", "confirmed-screenings"]})
    ((index, message),) = data_source_problems(fusion, SHARED_DATA)
    assert index == 0
    assert "available: pad-ufes-20, confirmed-screenings" in message


def test_diagnoses_are_the_data_sets_labels_and_other() -> None:
    assert [item.value for item in Diagnosis] == [*DIAGNOSES, "OTHER"]
