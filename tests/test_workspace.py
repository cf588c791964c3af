"""One dependency set: the uv workspace's lock (uv.lock) matches every member's ranges.

`make install` and the images install from uv.lock with --frozen, which never checks it
against the pyproject files: a range changed without `uv lock` would go unnoticed there.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from tests.conftest import REPO

UV = Path(sys.executable).with_name("uv")


def _lock() -> dict[str, dict[str, Any]]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return {package["name"]: package for package in lock["package"]}


def test_the_lock_is_up_to_date_with_every_pyproject() -> None:
    result = subprocess.run(
        [str(UV), "lock", "--check", "--offline"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_uv_is_pinned_once_at_one_version() -> None:
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    required = root["tool"]["uv"]["required-version"]
    assert required.startswith("==")
    version = required.removeprefix("==")
    assert _lock()["uv"]["version"] == version
    assert f"UV_VERSION := {version}\n" in (REPO / "Makefile").read_text()
    for dockerfile in sorted(REPO.glob("services/*/Dockerfile*")):
        assert re.findall(r"\buv==([\w.]+)", dockerfile.read_text()) == [version], dockerfile
    assert subprocess.run(
        [str(UV), "--version"], capture_output=True, text=True, check=True
    ).stdout.startswith(f"uv {version}")


def test_torch_is_the_cpu_build_and_no_cuda_library_is_locked() -> None:
    packages = _lock()
    assert packages["torch"]["version"].endswith("+cpu")
    assert not [name for name in packages if name.startswith("nvidia-")]


def test_both_onnxruntime_builds_are_locked_at_one_version() -> None:
    packages = _lock()
    assert packages["onnxruntime"]["version"] == packages["onnxruntime-gpu"]["version"]


def test_every_member_takes_its_siblings_from_the_workspace() -> None:
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    members = root["tool"]["uv"]["workspace"]["members"]
    names = {
        tomllib.loads((REPO / member / "pyproject.toml").read_text())["project"]["name"]
        for member in members
    }
    sources = root["tool"]["uv"]["sources"]
    assert {name for name in sources if name.startswith("skinscreen-")} == names
    assert all(sources[name] == {"workspace": True} for name in names)
    # The root project is the development environment: every member, installed together.
    assert set(root["project"]["dependencies"]) == names
