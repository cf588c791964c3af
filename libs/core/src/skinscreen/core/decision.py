"""The decision rule on a model card: when a screening is suspicious, and why.

Suspicious when the cancer probability reaches the card's cancer threshold, or
when the melanoma probability reaches the melanoma threshold (models that
output the six diagnoses). The inference worker, the trainer (validation and
`evaluate`) and the tests decide through here, so the rule is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from skinscreen.core.card import ModelCard
from skinscreen.core.pad_ufes import DIAGNOSES

Reason = Literal["cancer_probability", "melanoma_probability"]
MELANOMA: Final = "MEL"
MELANOMA_INDEX: Final = DIAGNOSES.index(MELANOMA)


@dataclass(frozen=True)
class DecisionRule:
    cancer_threshold: float
    melanoma_threshold: float | None = None

    @classmethod
    def from_card(cls, card: ModelCard) -> DecisionRule:
        melanoma = card.melanoma_threshold
        return cls(card.decision_threshold.value, None if melanoma is None else melanoma.value)

    def reasons(
        self, cancer_probability: float, diagnosis_probabilities: np.ndarray | None = None
    ) -> tuple[Reason, ...]:
        """The rules that fire for one screening; empty when it is not suspicious."""
        fired: list[Reason] = []
        if cancer_probability >= self.cancer_threshold:
            fired.append("cancer_probability")
        if (
            self.melanoma_threshold is not None
            and diagnosis_probabilities is not None
            and diagnosis_probabilities[MELANOMA_INDEX] >= self.melanoma_threshold
        ):
            fired.append("melanoma_probability")
        return tuple(fired)

    def suspicious(
        self, cancer_probability: np.ndarray, melanoma_probability: np.ndarray | None = None
    ) -> np.ndarray:
        """Vectorised: [N] cancer (and melanoma) probabilities -> [N] bool.

        Compared in float64, as `reasons` compares Python floats: NumPy would compare a
        float32 array with the threshold in float32, and a value within float32 rounding
        of a threshold could be decided differently by the two forms.
        """
        cancer = np.asarray(cancer_probability, dtype=np.float64)
        flagged = cancer >= self.cancer_threshold
        if self.melanoma_threshold is not None and melanoma_probability is not None:
            melanoma = np.asarray(melanoma_probability, dtype=np.float64)
            flagged |= melanoma >= self.melanoma_threshold
        return flagged
