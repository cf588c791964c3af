"""`make k8s-check`'s tools on the rendered overlays: Kubernetes schemas, CR schemas, checkov."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import REPO

from .conftest import K8S, OVERLAYS, Overlay

# The Kubernetes version whose OpenAPI schemas the objects must meet (kubernetes-validate's
# newest); --strict refuses any field the schema does not know.
KUBERNETES_VERSION = "1.37.0"

# Custom resources are not in Kubernetes' schemas: each is checked against its own.
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
}

DOCKERFILES = (
    "services/gateway/Dockerfile",
    "services/inference/Dockerfile",
    "services/inference/Dockerfile.gpu",
    "services/trainer/Dockerfile",
)


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((K8S / "schemas" / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(
    overlay: str, rendered: dict[str, Overlay], k8s_tools: Path
) -> None:
    result = subprocess.run(
        [
            str(k8s_tools / "kubernetes-validate"),
            "--strict",
            "--quiet",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            str(rendered[overlay].path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # It only warns about kinds it has no schema for: those must be the custom resources.
    unknown = [line for line in result.stdout.splitlines() if "Couldn't find schema" in line]
    kinds = {kind for _, kind in CUSTOM_SCHEMAS}
    assert all(any(f"kind {kind} " in line for kind in kinds) for line in unknown), unknown


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_their_schemas(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    checked = set()
    for item in rendered[overlay].objects:
        key = (item["apiVersion"], item["kind"])
        if key not in CUSTOM_SCHEMAS:
            assert "." not in item["apiVersion"].split("/")[0] or item["apiVersion"].startswith(
                ("apps/", "batch/", "policy/", "autoscaling/", "networking.k8s.io/")
            ), f"{key}: a custom resource without a schema in deploy/k8s/schemas"
            continue
        validator = jsonschema.Draft202012Validator(_schema(CUSTOM_SCHEMAS[key]))
        errors = [
            f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(item)
        ]
        assert not errors, f"{item['kind']}/{item['metadata']['name']}: {errors}"
        checked.add(key)
    assert checked == set(CUSTOM_SCHEMAS)


def test_the_custom_resource_schemas_refuse_what_the_crds_refuse() -> None:
    """The schemas themselves catch mistakes: a number as KEDA metadata, a misspelt field."""
    trigger: dict[str, Any] = {"type": "redis", "metadata": {"listLength": 64}}
    spec: dict[str, Any] = {"scaleTargetRef": {"name": "x"}, "triggers": [trigger]}
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": spec,
    }
    validator = jsonschema.Draft202012Validator(_schema("scaledobject.json"))
    assert not validator.is_valid(scaled)
    trigger["metadata"]["listLength"] = "64"
    assert validator.is_valid(scaled)
    spec["minReplicas"] = 1  # the HPA's name, not KEDA's minReplicaCount
    assert not validator.is_valid(scaled)
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "x"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up", "for": "5 m"}]}]},
    }
    assert not jsonschema.Draft202012Validator(_schema("prometheusrule.json")).is_valid(rule)


def test_checkov_finds_nothing_in_any_overlay_or_image(
    rendered: dict[str, Overlay], k8s_tools: Path
) -> None:
    """All checks run (severities need a Prisma Cloud key); skips are annotated in place."""
    command = [str(k8s_tools / "checkov"), "--quiet", "--compact", "--skip-download"]
    command += ["--output", "json", "--framework", "kubernetes", "dockerfile"]
    paths = [overlay.path for overlay in rendered.values()]
    paths += [REPO / dockerfile for dockerfile in DOCKERFILES]
    for path in paths:
        command += ["--file", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, check=False)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {report["check_type"] for report in reports} == {"kubernetes", "dockerfile"}
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']})"
        for report in reports
        for check in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert all(report["summary"]["passed"] > 0 for report in reports)
    assert result.returncode == 0, result.stderr


def test_hadolint_finds_nothing_in_the_dockerfiles(k8s_tools: Path) -> None:
    result = subprocess.run(
        [str(k8s_tools / "hadolint"), *(str(REPO / path) for path in DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
