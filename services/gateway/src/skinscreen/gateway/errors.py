"""Turns clinical validation errors into one entry per bad field, saying what is allowed."""

from __future__ import annotations

import json
from typing import Final

from pydantic import ValidationError

from skinscreen.core.clinical import AGE_MAX, AGE_MIN, REGIONS, SYMPTOMS, ClinicalInput

from .schemas import FieldError

FIELDS: Final = tuple(ClinicalInput.model_fields)

ALLOWED: Final[dict[str, str]] = {
    "age": f"an integer from {AGE_MIN} to {AGE_MAX} (years)",
    "region": "one of " + ", ".join(REGIONS),
    **dict.fromkeys(SYMPTOMS, "true, false or null (unknown)"),
}

OBJECT_DESCRIPTION: Final = (
    "a JSON object with exactly the fields " + ", ".join(FIELDS) + " (symptoms may be null)"
)


def _shown(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else ""
    return f" (got {text})" if text and len(text) <= 40 else ""


def clinical_errors(error: ValidationError) -> list[FieldError]:
    """One `FieldError` per problem, located under body.clinical."""
    problems = []
    for item in error.errors(include_url=False):
        loc = [str(part) if isinstance(part, str) else part for part in item["loc"]]
        field = loc[0] if loc else None
        kind = item["type"]
        if kind == "extra_forbidden":
            msg = f"unknown field {field!r}; allowed fields: " + ", ".join(FIELDS)
        elif kind == "missing":
            msg = f"{field} is required; allowed: {ALLOWED[str(field)]}"
        elif kind == "json_invalid":
            msg = f"clinical is not valid JSON ({item['msg']}); expected {OBJECT_DESCRIPTION}"
        elif kind == "enum":
            shown = _shown(item.get("input"))
            msg = f"{field}: not a known value{shown}; allowed: {ALLOWED[str(field)]}"
        elif kind == "model_type" or field is None:
            msg = f"clinical must be {OBJECT_DESCRIPTION}"
        else:
            msg = (
                f"{field}: {item['msg']}{_shown(item.get('input'))}; allowed: {ALLOWED[str(field)]}"
            )
        problems.append(FieldError(loc=["body", "clinical", *loc], msg=msg, type=kind))
    return problems
