"""The committed reports render again, byte for byte, from the JSON saved beside them: a
change to a renderer that would rewrite a published report fails here."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skinscreen.research import (
    dermoscopy_backbone,
    dermoscopy_experiments,
    fusion_experiments,
    model_selection,
)
from skinscreen.trainer import report
from tests.conftest import REPO

Renderer = Callable[[dict[str, Any]], str]


@pytest.mark.parametrize(
    ("folder", "saved", "rendered", "render"),
    [
        ("docs/experiments/fusion", "report.json", "report.md", fusion_experiments.render_markdown),
        (
            "docs/experiments/dermoscopy",
            "report.json",
            "report.md",
            dermoscopy_experiments.render_markdown,
        ),
        (
            "docs/experiments/dermoscopy-lite0",
            "report.json",
            "report.md",
            dermoscopy_backbone.render_comparison,
        ),
        ("docs/default-model", "report.json", "report.md", report.render_markdown),
        ("docs/default-model/selection", "selection.json", "selection.md", model_selection.render),
    ],
)
def test_committed_reports_render_from_their_json(
    folder: str, saved: str, rendered: str, render: Renderer
) -> None:
    path = REPO / folder
    expected = (path / rendered).read_text()
    assert render(json.loads((path / saved).read_text())) == expected


def test_a_changed_figure_changes_the_rendering() -> None:
    """The comparison above can fail: one number of the saved report moves the Markdown."""
    path: Path = REPO / "docs/experiments/dermoscopy"
    saved = json.loads((path / "report.json").read_text())
    saved["split_networks"][2]["test_at_0.5"]["roc_auc"] += 0.01
    assert dermoscopy_experiments.render_markdown(saved) != (path / "report.md").read_text()
