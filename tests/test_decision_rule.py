"""The decision rule on a model card: which threshold fires, and when a card may have two."""

from __future__ import annotations

import json
from typing import Any, get_args

import numpy as np
import pytest
from pydantic import ValidationError

from skinscreen.core.card import DecisionThreshold, ModelCard
from skinscreen.core.decision import MELANOMA_INDEX, DecisionRule, Reason
from skinscreen.core.pad_ufes import DIAGNOSES
from tests.conftest import REPO

SHIPPED_CARD = REPO / "models" / "skinscreen-fusion" / "20261122.041231" / "card.json"


def diagnoses(melanoma: float) -> np.ndarray:
    """Six diagnosis probabilities summing to 1, with P(MEL) = melanoma."""
    rest = (1.0 - melanoma) / 5
    row = np.full(len(DIAGNOSES), rest)
    row[MELANOMA_INDEX] = melanoma
    return row


def threshold(value: float) -> DecisionThreshold:
    return DecisionThreshold(value=value, method="recall", description="test")


def shipped_card(**update: Any) -> ModelCard:
    """The card of the shipped one-output model, with `update` applied and validated."""
    fields = json.loads(SHIPPED_CARD.read_text())
    return ModelCard.model_validate({**fields, **update})


RULE = DecisionRule(cancer_threshold=0.3, melanoma_threshold=0.1)


def test_melanoma_is_the_third_diagnosis() -> None:
    assert DIAGNOSES == ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
    assert MELANOMA_INDEX == 2
    assert get_args(Reason) == ("cancer_probability", "melanoma_probability")


@pytest.mark.parametrize(
    ("cancer", "melanoma", "expected"),
    [
        (0.2, 0.05, ()),
        (0.3, 0.05, ("cancer_probability",)),
        (0.9, 0.0999, ("cancer_probability",)),
        (0.2, 0.1, ("melanoma_probability",)),
        (0.29, 0.25, ("melanoma_probability",)),
        (0.5, 0.4, ("cancer_probability", "melanoma_probability")),
    ],
)
def test_each_threshold_fires_with_its_reason(
    cancer: float, melanoma: float, expected: tuple[str, ...]
) -> None:
    """A threshold fires when the probability reaches it (>=), each under its own name."""
    assert RULE.reasons(cancer, diagnoses(melanoma)) == expected
    flagged = RULE.suspicious(np.array([cancer]), np.array([melanoma]))
    assert flagged.tolist() == [bool(expected)]


def test_vectorised_and_per_screening_agree() -> None:
    rng = np.random.default_rng(0)
    cancer = rng.uniform(size=200)
    rows = rng.dirichlet(np.ones(len(DIAGNOSES)), size=200)
    flagged = RULE.suspicious(cancer, rows[:, MELANOMA_INDEX])
    reasons = [RULE.reasons(float(c), row) for c, row in zip(cancer, rows, strict=True)]
    assert flagged.tolist() == [bool(fired) for fired in reasons]
    # Every case occurs in this sample, so the comparison above covers each.
    assert set(reasons) == {
        (),
        ("cancer_probability",),
        ("melanoma_probability",),
        ("cancer_probability", "melanoma_probability"),
    }


def test_without_diagnoses_only_the_cancer_threshold_decides() -> None:
    """A rule given no diagnosis probabilities (a one-output model) ignores its melanoma
    threshold; a rule without a melanoma threshold ignores the diagnoses."""
    assert RULE.reasons(0.2, None) == ()
    assert RULE.reasons(0.3, None) == ("cancer_probability",)
    assert RULE.suspicious(np.array([0.2, 0.3])).tolist() == [False, True]
    cancer_only = DecisionRule(cancer_threshold=0.3)
    assert cancer_only.reasons(0.2, diagnoses(0.99)) == ()
    assert cancer_only.suspicious(np.array([0.2]), np.array([0.99])).tolist() == [False]


def test_an_old_card_means_one_output_and_no_melanoma_rule() -> None:
    card = shipped_card()
    assert card.outputs == ("cancer_probability",)
    assert not card.has_diagnoses
    assert card.melanoma_threshold is None
    rule = DecisionRule.from_card(card)
    assert rule == DecisionRule(card.decision_threshold.value, None)
    assert rule.reasons(0.0, diagnoses(1.0)) == ()


def test_a_card_with_both_outputs_carries_both_thresholds() -> None:
    card = shipped_card(
        outputs=["cancer_probability", "diagnosis_probabilities"],
        decision_threshold=threshold(0.4).model_dump(),
        melanoma_threshold=threshold(0.05).model_dump(),
    )
    assert card.has_diagnoses
    rule = DecisionRule.from_card(card)
    assert (rule.cancer_threshold, rule.melanoma_threshold) == (0.4, 0.05)
    assert rule.reasons(0.1, diagnoses(0.06)) == ("melanoma_probability",)


def test_the_card_refuses_a_melanoma_threshold_without_the_diagnosis_output() -> None:
    with pytest.raises(ValidationError, match="melanoma_threshold needs the diagnosis"):
        shipped_card(melanoma_threshold=threshold(0.05).model_dump())
    with pytest.raises(ValidationError, match="melanoma_threshold needs the diagnosis"):
        shipped_card(
            outputs=["cancer_probability"], melanoma_threshold=threshold(0.05).model_dump()
        )


@pytest.mark.parametrize(
    "outputs",
    [
        ["diagnosis_probabilities", "cancer_probability"],
        ["cancer_probability", "cancer_probability"],
        [],
        ["cancer_probability", "logits"],
    ],
)
def test_the_card_refuses_outputs_outside_the_contract(outputs: list[str]) -> None:
    with pytest.raises(ValidationError):
        shipped_card(outputs=outputs)
