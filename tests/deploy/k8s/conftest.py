"""Rendered overlays and the tools of `make k8s-check`, shared by the static deploy tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "gpu", "prod")
K8S_VENV = REPO / ".venv-k8s"


@dataclass
class Overlay:
    name: str
    path: Path  # the rendered multi-document YAML
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [item for item in self.objects if item["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [item for item in self.of_kind(kind) if item["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: {len(found)} {kind} named {name}"
        return found[0]

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(kind/name, pod spec) of every workload: Deployments, StatefulSets, CronJobs."""
        for item in self.objects:
            spec = item.get("spec", {})
            if item["kind"] in ("Deployment", "StatefulSet"):
                yield f"{item['kind']}/{item['metadata']['name']}", spec["template"]["spec"]
            elif item["kind"] == "CronJob":
                template = spec["jobTemplate"]["spec"]["template"]
                yield f"CronJob/{item['metadata']['name']}", template["spec"]


def kubectl() -> str:
    found = shutil.which(os.environ.get("KUBECTL", "kubectl"))
    assert found, "kubectl not found (it brings kustomize); set KUBECTL to its path"
    return found


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Overlay]:
    """Every overlay as `kubectl kustomize` builds it, written to a file and parsed."""
    folder = tmp_path_factory.mktemp("rendered")
    overlays = {}
    for name in OVERLAYS:
        build = subprocess.run(
            [kubectl(), "kustomize", str(K8S / "overlays" / name)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert build.returncode == 0, f"overlay {name} does not build:\n{build.stderr}"
        path = folder / f"{name}.yaml"
        path.write_text(build.stdout)
        objects = [item for item in yaml.safe_load_all(build.stdout) if item]
        overlays[name] = Overlay(name, path, objects)
    return overlays


@pytest.fixture(scope="session")
def k8s_tools() -> Path:
    """The bin/ folder of .venv-k8s, installed by the Makefile's rule when it is missing."""
    subprocess.run(
        ["make", "--no-print-directory", str(K8S_VENV.relative_to(REPO) / ".installed")],
        cwd=REPO,
        check=True,
        timeout=540,
    )
    return K8S_VENV / "bin"
