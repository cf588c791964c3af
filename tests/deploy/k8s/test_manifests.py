"""The rendered overlays have the properties the deployment promises (docs/deploy.md)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from skinscreen.gateway.settings import Settings as GatewaySettings
from skinscreen.inference.settings import Settings as InferenceSettings
from skinscreen.runtime.commands import (
    PRESTART_COMMAND,
    TRAINER_COMMAND,
    WORKER_COMMAND,
    gateway_command,
)
from skinscreen.runtime.queue import DEFAULT_MODEL_NAME, QUEUE, queue_for
from skinscreen.runtime.settings import SharedSettings
from skinscreen.runtime.training_runs import parse_training_request
from skinscreen.trainer.settings import Settings as TrainerSettings
from tests.conftest import REPO

from .conftest import K8S, OVERLAYS, Overlay

SERVICES = ("gateway", "inference", "trainer")
DERMOSCOPY = "skinscreen-dermoscopy"
# Every served model's inference worker (one model each, MODEL_NAME), in every overlay.
INFERENCE_OF = {
    DEFAULT_MODEL_NAME: "skinscreen-inference",
    DERMOSCOPY: "skinscreen-inference-dermoscopy",
}
# Pods start the services as `make run` does (skinscreen.runtime.commands), with the image's python.
PYTHON = "python"
# Read by the process or a library, not by a settings class.
PROCESS_VARIABLES = {"PROMETHEUS_MULTIPROC_DIR", "MPLCONFIGDIR"}
SETTINGS_OF = {
    "skinscreen-shared": SharedSettings,
    "skinscreen-gateway": GatewaySettings,
    "skinscreen-inference": InferenceSettings,
    "skinscreen-inference-dermoscopy": InferenceSettings,
    "skinscreen-trainer": TrainerSettings,
}
GPU = "nvidia.com/gpu"
QUANTITY_SUFFIXES = {"m": 0.001, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _config_map(overlay: Overlay, name: str) -> dict[str, Any]:
    """A generated ConfigMap by its name before kustomize's hash suffix."""
    found = [
        item
        for item in overlay.of_kind("ConfigMap")
        if name in (item["metadata"]["name"], item["metadata"]["name"].rsplit("-", 1)[0])
    ]
    assert len(found) == 1, f"{overlay.name}: ConfigMap {name}: {len(found)}"
    return found[0]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and value in expression["values"]:
            return False
    return True


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _environment(overlay: Overlay, container: dict[str, Any]) -> dict[str, str | None]:
    """A container's variables: envFrom in order, then env over them (from a Secret: None)."""
    variables: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (config,) = [c for c in overlay.of_kind("ConfigMap") if c["metadata"]["name"] == name]
        variables.update(config["data"])
    for variable in container.get("env", []):
        variables[variable["name"]] = variable.get("value")
    return variables


def _quantity(value: str | int) -> float:
    """A Kubernetes resource quantity ("250m", "2", "768Mi") as a number."""
    text = str(value)
    for suffix, factor in QUANTITY_SUFFIXES.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


def _image_tag(container: dict[str, Any]) -> tuple[str, str]:
    name, tag = container["image"].rsplit(":", 1)
    return name, tag


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down(overlay: str, rendered: dict[str, Overlay]) -> None:
    workloads = dict(rendered[overlay].pod_specs())
    assert {"Deployment/skinscreen-gateway", "CronJob/skinscreen-retrain"} <= set(workloads)
    for where, pod in workloads.items():
        pod_context = pod["securityContext"]
        assert pod_context["runAsNonRoot"] is True, where
        assert pod_context["runAsUser"] > 0, where
        assert pod_context["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        for container in _containers(pod):
            at = f"{where}/{container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, at
            assert context["readOnlyRootFilesystem"] is True, at
            assert context.get("privileged", False) is False, at
            assert context["capabilities"]["drop"] == ["ALL"], at
            assert "add" not in context["capabilities"], at
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{at} {bound}"
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1], at
            assert not image.endswith(":latest"), at


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_has_its_own_service_account(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    accounts = {item["metadata"]["name"] for item in rendered[overlay].of_kind("ServiceAccount")}
    used = {}
    for where, pod in rendered[overlay].pod_specs():
        assert pod["serviceAccountName"] in accounts, where
        used[where] = pod["serviceAccountName"]
    by_service = {used[f"Deployment/skinscreen-{service}"] for service in SERVICES}
    assert by_service == {f"skinscreen-{service}" for service in SERVICES}
    for account in rendered[overlay].of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_probes_scaling_and_migrations(overlay: str, rendered: dict[str, Overlay]) -> None:
    objects = rendered[overlay]
    deployment = objects.get("Deployment", "skinscreen-gateway")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pod = deployment["spec"]["template"]["spec"]
    (prestart,) = pod["initContainers"]
    assert prestart["command"] == [PYTHON, *PRESTART_COMMAND[1:]]
    (gateway,) = pod["containers"]
    assert gateway["command"][:5] == [PYTHON, *gateway_command("", 0)[1:5]]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = gateway["ports"][0]["containerPort"]
    assert gateway["command"][gateway["command"].index("--port") + 1] == str(port)
    # SIGTERM after the pre-stop pause; uvicorn drains within its own timeout, inside the grace.
    drain_s = int(gateway["command"][gateway["command"].index("--timeout-graceful-shutdown") + 1])
    pause_s = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert drain_s >= GatewaySettings.model_fields["MAX_WAIT_S"].default
    assert pause_s + drain_s < pod["terminationGracePeriodSeconds"]
    hpa = objects.get("HorizontalPodAutoscaler", "skinscreen-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "skinscreen-gateway",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    service = objects.get("Service", "skinscreen-gateway")
    assert _matches({"matchLabels": service["spec"]["selector"]}, _pod_labels(deployment))


@pytest.mark.parametrize("model", INFERENCE_OF)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_model_has_a_worker_scaled_on_its_own_queue(
    overlay: str, model: str, rendered: dict[str, Overlay]
) -> None:
    objects = rendered[overlay]
    name = INFERENCE_OF[model]
    # A model the gateway registers from the shipped models/ (its pre-start step).
    assert (REPO / "models" / model).is_dir(), f"{model} is not a shipped model"
    deployment = objects.get("Deployment", name)
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    assert worker["command"] == [PYTHON, *WORKER_COMMAND[1:]]
    # The worker serves the model MODEL_NAME names, and consumes queue_for(MODEL_NAME).
    assert _environment(objects, worker)["MODEL_NAME"] == model
    scaled = objects.get("ScaledObject", name)["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    assert scaled["cooldownPeriod"] > 0
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "redis"
    # Kombu keeps each queue as a Redis list of the same name.
    assert trigger["metadata"]["listName"] == queue_for(model)
    assert (trigger["metadata"]["listName"] == QUEUE) == (model == DEFAULT_MODEL_NAME)
    assert int(trigger["metadata"]["listLength"]) > 0
    # One Redis, one set of credentials: every model's trigger uses the default's.
    default = objects.get("ScaledObject", INFERENCE_OF[DEFAULT_MODEL_NAME])["spec"]
    assert trigger["authenticationRef"] == default["triggers"][0]["authenticationRef"]
    auth = objects.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    parameters = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(parameters) == {"address", "password"}
    assert {ref["name"] for ref in parameters.values()} == {"skinscreen-redis"}
    # A task waits at most RESULT_TIMEOUT_S for its batch; warm shutdown must outlast that.
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > InferenceSettings.model_fields["RESULT_TIMEOUT_S"].default


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_queue_is_scaled_once(overlay: str, rendered: dict[str, Overlay]) -> None:
    """No ScaledObject without a served model, no two on one queue, no worker left unscaled."""
    objects = rendered[overlay]
    scaled = objects.of_kind("ScaledObject")
    lists = sorted(item["spec"]["triggers"][0]["metadata"]["listName"] for item in scaled)
    assert lists == sorted(queue_for(model) for model in INFERENCE_OF)
    targets = {item["spec"]["scaleTargetRef"]["name"] for item in scaled}
    workers = {
        item["metadata"]["name"]
        for item in objects.of_kind("Deployment")
        if _pod_labels(item)["app.kubernetes.io/component"] == "inference"
    }
    assert targets == workers == set(INFERENCE_OF.values())


@pytest.mark.parametrize(("overlay", "gpu"), [("dev", False), ("gpu", True), ("prod", True)])
def test_inference_runs_on_a_gpu_where_the_overlay_says(
    overlay: str, gpu: bool, rendered: dict[str, Overlay]
) -> None:
    pod = rendered[overlay].get("Deployment", "skinscreen-inference")["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    image = worker["image"].rsplit(":", 1)[0]
    if gpu:
        assert image.endswith("/inference-gpu")
        assert worker["resources"]["requests"][GPU] == worker["resources"]["limits"][GPU] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    else:
        assert image.endswith("/inference")
        assert GPU not in json.dumps(pod)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_dermoscopy_worker_runs_on_cpu_everywhere(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    """A 4.9 MB CNN: the CPU image on any node, even where skinscreen-inference has GPUs."""
    objects = rendered[overlay]
    pod = objects.get("Deployment", INFERENCE_OF[DERMOSCOPY])["spec"]["template"]["spec"]
    assert GPU not in json.dumps(pod)
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod
    assert "affinity" not in pod
    (worker,) = pod["containers"]
    image, tag = _image_tag(worker)
    assert image.endswith("/inference"), image
    # Both inference images come from one release.
    default = objects.get("Deployment", INFERENCE_OF[DEFAULT_MODEL_NAME])
    assert tag == _image_tag(default["spec"]["template"]["spec"]["containers"][0])[1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_dermoscopy_worker_is_hardened_like_the_default_one(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    objects = rendered[overlay]
    pods = {
        model: objects.get("Deployment", name)["spec"]["template"]["spec"]
        for model, name in INFERENCE_OF.items()
    }
    default, dermoscopy = pods[DEFAULT_MODEL_NAME], pods[DERMOSCOPY]
    for key in (
        "securityContext",
        "serviceAccountName",
        "automountServiceAccountToken",
        "terminationGracePeriodSeconds",
        "volumes",
    ):
        assert dermoscopy[key] == default[key], key
    (theirs,) = default["containers"]
    (ours,) = dermoscopy["containers"]
    for key in (
        "securityContext",
        "command",
        "imagePullPolicy",
        "ports",
        "startupProbe",
        "livenessProbe",
        "readinessProbe",
        "volumeMounts",
    ):
        assert ours[key] == theirs[key], key
    # The same Secrets; the same shared settings, with its own worker settings after them.
    assert [v for v in ours["env"] if "valueFrom" in v] == theirs["env"]
    assert ours["envFrom"][0] == theirs["envFrom"][0]
    environment = _environment(objects, ours)
    assert {"DATABASE_URL", "REDIS_URL", "METRICS_PORT", "MAX_BATCH_SIZE"} <= set(environment)
    assert int(str(environment["METRICS_PORT"])) == ours["ports"][0]["containerPort"]
    # Its worker settings hold together (CONCURRENCY >= MAX_BATCH_SIZE, ...); Secrets stand in.
    InferenceSettings.model_validate({k: v or "from-a-secret" for k, v in environment.items()})
    resources = ours["resources"]
    for resource in ("cpu", "memory", "ephemeral-storage"):
        request, limit = resources["requests"][resource], resources["limits"][resource]
        assert 0 < _quantity(request) <= _quantity(limit), resource
    # A task waits at most RESULT_TIMEOUT_S for its batch; warm shutdown must outlast that.
    grace = dermoscopy["terminationGracePeriodSeconds"]
    assert grace > InferenceSettings.model_fields["RESULT_TIMEOUT_S"].default


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_worker_and_scheduled_retraining(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    objects = rendered[overlay]
    trainer = objects.get("Deployment", "skinscreen-trainer")
    assert trainer["spec"]["replicas"] == 1
    (worker,) = trainer["spec"]["template"]["spec"]["containers"]
    # Its main() consumes the training queue only, one run at a time.
    assert worker["command"] == [PYTHON, *TRAINER_COMMAND[1:]]
    runs_dir = _config_map(objects, "skinscreen-trainer")["data"]["RUNS_DIR"]
    (runs,) = [m for m in worker["volumeMounts"] if m["mountPath"] == runs_dir]
    assert not runs.get("readOnly", False)
    cron = objects.get("CronJob", "skinscreen-retrain")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (submit,) = pod["containers"]
    assert submit["command"] == [
        "skinscreen-trainer", "runs", "submit", "--config", "/etc/skinscreen/training.json",
    ]  # fmt: skip
    (mount,) = [m for m in submit["volumeMounts"] if m["mountPath"] == "/etc/skinscreen"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config = [
        item
        for item in objects.of_kind("ConfigMap")
        if item["metadata"]["name"] == volume["configMap"]["name"]
    ]
    assert len(config) == 1
    parse_training_request(json.loads(config[0]["data"]["training.json"]))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_models_come_from_the_artifact_store(overlay: str, rendered: dict[str, Overlay]) -> None:
    objects = rendered[overlay]
    store = _config_map(objects, "skinscreen-shared")["data"]["MODEL_STORE"]
    writable = {}
    for service in (*SERVICES, "inference-dermoscopy"):
        pod = objects.get("Deployment", f"skinscreen-{service}")["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == store]
        claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
        assert claim == "skinscreen-models", service
        writable[service] = not mount.get("readOnly", False)
    # Only the trainer publishes.
    assert writable == {
        "gateway": False,
        "inference": False,
        "inference-dermoscopy": False,
        "trainer": True,
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_secret_references_resolve(overlay: str, rendered: dict[str, Overlay]) -> None:
    objects = rendered[overlay]
    config_maps = {item["metadata"]["name"]: item for item in objects.of_kind("ConfigMap")}
    secrets = {item["metadata"]["name"] for item in objects.of_kind("Secret")}
    referenced_secrets = set()
    optional_secrets = set()
    for where, pod in objects.pod_specs():
        for container in _containers(pod):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, where
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref.get("optional"):
                    optional_secrets.add(ref["name"])
                    # Read by the gateway's settings, under the name the Secret's key has.
                    assert ref["key"] == variable["name"] in GatewaySettings.model_fields, where
                elif ref:
                    referenced_secrets.add(ref["name"])
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, where
            if "secret" in volume:
                referenced_secrets.add(volume["secret"]["secretName"])
    assert referenced_secrets == {"skinscreen-database", "skinscreen-redis"}
    # No optional Secret: the operator token is gone (API keys live in the database).
    assert optional_secrets == set()
    # prod reads Secrets its operators create; the others generate theirs.
    assert secrets == (set() if overlay == "prod" else referenced_secrets)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_configured_variable_is_a_setting(overlay: str, rendered: dict[str, Overlay]) -> None:
    """pydantic-settings ignores unknown variables: a misspelt one would silently do nothing."""
    for name, settings in SETTINGS_OF.items():
        data = _config_map(rendered[overlay], name)["data"]
        unknown = set(data) - set(settings.model_fields) - PROCESS_VARIABLES
        assert not unknown, f"{name}: {sorted(unknown)} are read by nothing"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateways_rate_limits_come_from_its_config_map(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    """Per API key (issue 15); valid as the gateway reads them, or it would not start."""
    data = _config_map(rendered[overlay], "skinscreen-gateway")["data"]
    limits = {name: data[name] for name in ("RATE_LIMIT_SCREENINGS", "RATE_LIMIT_READS")}
    GatewaySettings.model_validate(
        {**limits, "DATABASE_URL": "postgresql://x", "REDIS_URL": "redis://x"}
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_is_reachable_from_outside(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    objects = rendered[overlay]
    policies = objects.of_kind("NetworkPolicy")
    deny_all = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
        if p["spec"]["policyTypes"] == ["Ingress"]
    ]
    assert len(deny_all) == 1, "no default deny of ingress"
    workloads = [*objects.of_kind("Deployment"), *objects.of_kind("StatefulSet")]
    for workload in workloads:
        labels = _pod_labels(workload)
        rules = [
            rule
            for policy in policies
            if _matches(policy["spec"]["podSelector"], labels)
            for rule in policy["spec"].get("ingress", [])
        ]
        open_to_all = [rule for rule in rules if "from" not in rule]
        is_gateway = workload["metadata"]["name"] == "skinscreen-gateway"
        assert bool(open_to_all) == is_gateway, workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_metrics_listen_on_the_pod_network_and_admit_prometheus_only(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    """A worker's /metrics binds loopback unless METRICS_HOST says otherwise: the manifests
    open it on the pod network, and only the monitoring namespace may reach that port."""
    assert InferenceSettings.model_fields["METRICS_HOST"].default == "127.0.0.1"
    assert TrainerSettings.model_fields["METRICS_HOST"].default == "127.0.0.1"
    objects = rendered[overlay]
    policies = objects.of_kind("NetworkPolicy")
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    workers = [*INFERENCE_OF.values(), "skinscreen-trainer"]
    for name in workers:
        deployment = objects.get("Deployment", name)
        (worker,) = deployment["spec"]["template"]["spec"]["containers"]
        environment = _environment(objects, worker)
        assert environment["METRICS_HOST"] == "0.0.0.0", name
        labels = _pod_labels(deployment)
        rules = [
            rule
            for policy in policies
            if policy["spec"]["podSelector"] != {}
            and _matches(policy["spec"]["podSelector"], labels)
            for rule in policy["spec"].get("ingress", [])
        ]
        # Every rule that admits anything to a worker names the metrics port and Prometheus'
        # namespace alone.
        assert rules, name
        for rule in rules:
            assert rule.get("from") == [monitoring], (name, rule)
            assert rule.get("ports") == [{"port": "metrics", "protocol": "TCP"}], (name, rule)

    # The gateway's API port is open to all; its metrics are on a port of their own, on the
    # pod network too, that only Prometheus' namespace may reach.
    assert GatewaySettings.model_fields["METRICS_HOST"].default == "127.0.0.1"
    deployment = objects.get("Deployment", "skinscreen-gateway")
    (gateway,) = deployment["spec"]["template"]["spec"]["containers"]
    assert _environment(objects, gateway)["METRICS_HOST"] == "0.0.0.0"
    assert {"http", "metrics"} <= {port["name"] for port in gateway["ports"]}
    labels = _pod_labels(deployment)
    rules = [
        rule
        for policy in policies
        if policy["spec"]["podSelector"] != {} and _matches(policy["spec"]["podSelector"], labels)
        for rule in policy["spec"].get("ingress", [])
    ]
    metrics_port = {"port": "metrics", "protocol": "TCP"}
    for rule in rules:
        if "from" not in rule:
            assert metrics_port not in rule.get("ports", []), rule
        else:
            assert rule["from"] == [monitoring], rule
    assert any(metrics_port in rule.get("ports", []) for rule in rules if "from" in rule)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_inference_worker_is_scraped_and_reaches_its_servers(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    """Policies select pods by label: a worker with other labels would be cut off, unseen."""
    objects = rendered[overlay]
    policies = objects.of_kind("NetworkPolicy")
    for name in INFERENCE_OF.values():
        deployment = objects.get("Deployment", name)
        labels = _pod_labels(deployment)
        assert labels["app.kubernetes.io/component"] == "inference"
        rules = [
            rule
            for policy in policies
            if policy["spec"]["podSelector"] != {}
            and _matches(policy["spec"]["podSelector"], labels)
            for rule in policy["spec"].get("ingress", [])
        ]
        # Prometheus, from the monitoring namespace, on the port the ServiceMonitor scrapes.
        monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
        assert any(
            {"namespaceSelector": monitoring} in rule.get("from", [])
            and {"port": "metrics", "protocol": "TCP"} in rule.get("ports", [])
            for rule in rules
        ), name
        (worker,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "metrics" in {port["name"] for port in worker["ports"]}
        # PostgreSQL and Redis in the cluster (dev, gpu) take it.
        for server in objects.of_kind("StatefulSet"):
            (policy,) = [
                p
                for p in policies
                if p["spec"]["podSelector"] != {}
                and _matches(p["spec"]["podSelector"], _pod_labels(server))
            ]
            peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
            assert any(
                _matches(peer["podSelector"], labels) for peer in peers if "podSelector" in peer
            ), f"{server['metadata']['name']} refuses {name}"


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_in_cluster_servers_only_take_the_services(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    objects = rendered[overlay]
    clients = {"gateway", "inference", "trainer", "retrain"}
    for name in ("skinscreen-postgres", "skinscreen-redis"):
        server = objects.get("StatefulSet", name)
        assert server["spec"]["replicas"] == 1
        assert server["spec"]["volumeClaimTemplates"], f"{name} keeps no data"
        (policy,) = [
            p
            for p in objects.of_kind("NetworkPolicy")
            if p["spec"]["podSelector"] != {}
            and _matches(p["spec"]["podSelector"], _pod_labels(server))
        ]
        peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
        pods = [peer["podSelector"] for peer in peers if "podSelector" in peer]
        (selector,) = pods
        for component in clients:
            assert _matches(selector, {"app.kubernetes.io/component": component})
        for component in ("database", "broker", "anything-else"):
            assert not _matches(selector, {"app.kubernetes.io/component": component})
        namespaces = [peer["namespaceSelector"] for peer in peers if "namespaceSelector" in peer]
        # Only Redis is read from outside: by KEDA, for the queue's length.
        expected = [{"matchLabels": {"kubernetes.io/metadata.name": "keda"}}]
        assert namespaces == (expected if name == "skinscreen-redis" else [])


# docs/deploy.md, whitespace folded: the numbers it promises are read from it, so the
# deployment guide and the manifests cannot drift apart without a test failing.
DEPLOY_GUIDE = " ".join((REPO / "docs" / "deploy.md").read_text().split())
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "ten": 10}


def promised(pattern: str) -> re.Match[str]:
    found = re.search(pattern, DEPLOY_GUIDE)
    assert found, f"docs/deploy.md no longer says {pattern!r}: pin what it says now"
    return found


def _number(text: str) -> int:
    return NUMBER_WORDS[text] if text in NUMBER_WORDS else int(text)


def _replicas(text: str) -> tuple[int, int]:
    """ "2-10" -> (2, 10); "1" -> (1, 1)."""
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def _replica_table() -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """docs/deploy.md's overlay table: (gateway, inference) replica ranges of each overlay."""
    ranges = {}
    for overlay in OVERLAYS:
        row = promised(rf"\| `{overlay}` \|(?:[^|]*\|){{3}} ([^|]+) \|").group(1)
        gateway, inference = (part.split()[0] for part in row.split(", "))
        ranges[overlay] = (_replicas(gateway), _replicas(inference))
    return ranges


def _hpa_behavior(scaled: dict[str, Any]) -> dict[str, Any]:
    behavior: dict[str, Any] = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    return behavior


def test_replica_ranges_are_the_ones_readme_gives(rendered: dict[str, Overlay]) -> None:
    table = _replica_table()
    dermoscopy = promised(
        r"pod per \d+ waiting screenings \((\S+) in `dev`, (\S+) in `gpu`, (\S+) in `prod`\)"
    )
    for index, overlay in enumerate(OVERLAYS, 1):
        objects = rendered[overlay]
        hpa = objects.get("HorizontalPodAutoscaler", "skinscreen-gateway")["spec"]
        scaled = {name: objects.get("ScaledObject", name)["spec"] for name in INFERENCE_OF.values()}
        found = {
            "gateway": (hpa["minReplicas"], hpa["maxReplicas"]),
            **{
                name: (spec["minReplicaCount"], spec["maxReplicaCount"])
                for name, spec in scaled.items()
            },
        }
        assert found == {
            "gateway": table[overlay][0],
            INFERENCE_OF[DEFAULT_MODEL_NAME]: table[overlay][1],
            INFERENCE_OF[DERMOSCOPY]: _replicas(dermoscopy.group(index)),
        }, overlay
    assert not rendered["prod"].of_kind("StatefulSet"), "prod uses managed PostgreSQL and Redis"
    assert {s["metadata"]["name"] for s in rendered["dev"].of_kind("StatefulSet")} == {
        "skinscreen-postgres",
        "skinscreen-redis",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_targets_and_policies_are_the_ones_readme_gives(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    objects = rendered[overlay]
    # "The gateway scales on CPU (HorizontalPodAutoscaler, 70 %)."
    utilization = int(promised(r"scales on CPU \(HorizontalPodAutoscaler, (\d+) %\)").group(1))
    (metric,) = objects.get("HorizontalPodAutoscaler", "skinscreen-gateway")["spec"]["metrics"]
    assert metric == {
        "type": "Resource",
        "resource": {
            "name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": utilization},
        },
    }
    # "KEDA adds a pod per 64 waiting (32 on CPU), at most two pods a minute, and removes one
    # every two minutes after five quiet ones"
    inference = promised(
        r"KEDA adds a pod per (\d+) waiting \((\d+) on CPU\), at most (\w+) pods a minute,"
        r" and removes (\w+) every (\w+) minutes after (\w+) quiet ones"
    )
    per_gpu_pod, per_cpu_pod = int(inference.group(1)), int(inference.group(2))
    up, down, down_minutes, quiet_minutes = (_number(inference.group(i)) for i in (3, 4, 5, 6))
    default = objects.get("ScaledObject", INFERENCE_OF[DEFAULT_MODEL_NAME])["spec"]
    pod = objects.get("Deployment", INFERENCE_OF[DEFAULT_MODEL_NAME])["spec"]["template"]["spec"]
    on_gpu = GPU in json.dumps(pod)
    (trigger,) = default["triggers"]
    assert int(trigger["metadata"]["listLength"]) == (per_gpu_pod if on_gpu else per_cpu_pod)
    behavior = _hpa_behavior(default)
    assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": up, "periodSeconds": 60}]
    assert behavior["scaleDown"]["policies"] == [
        {"type": "Pods", "value": down, "periodSeconds": 60 * down_minutes}
    ]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 60 * quiet_minutes
    # The dermoscopy worker: "It adds a pod per 32 waiting screenings (...), at most two a
    # minute, and, ..., removes one a minute after two quiet ones."
    dermoscopy = promised(
        r"It adds a pod per (\d+) waiting screenings \([^)]*\), at most (\w+) a minute, and,"
        r" since a CPU pod starts in seconds, removes (\w+) a minute after (\w+) quiet ones"
    )
    scaled = objects.get("ScaledObject", INFERENCE_OF[DERMOSCOPY])["spec"]
    (trigger,) = scaled["triggers"]
    assert int(trigger["metadata"]["listLength"]) == int(dermoscopy.group(1))
    behavior = _hpa_behavior(scaled)
    assert behavior["scaleUp"]["policies"] == [
        {"type": "Pods", "value": _number(dermoscopy.group(2)), "periodSeconds": 60}
    ]
    assert behavior["scaleDown"]["policies"] == [
        {"type": "Pods", "value": _number(dermoscopy.group(3)), "periodSeconds": 60}
    ]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 60 * _number(dermoscopy.group(4))
    for spec in (default, scaled):
        # Scaling up is never held back by a window: "at most N a minute" is the only brake.
        assert _hpa_behavior(spec)["scaleUp"].get("stabilizationWindowSeconds", 0) == 0
        assert "selectPolicy" not in _hpa_behavior(spec)["scaleUp"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_times_are_the_ones_readme_gives(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    """ "A gateway pod leaves the Service's endpoints during a 5 s pre-stop pause, ... (a long
    poll lasts at most 30 s; the grace period is 45 s). An inference pod gets 150 s"."""
    gateway_promise = promised(
        r"during a (\d+) s pre-stop pause, .*\(a long poll lasts at most (\d+) s; the grace"
        r" period is (\d+) s\)\. An inference pod gets (\d+) s"
    )
    pause_s, long_poll_s, grace_s, inference_s = (
        int(gateway_promise.group(i)) for i in (1, 2, 3, 4)
    )
    objects = rendered[overlay]
    pod = objects.get("Deployment", "skinscreen-gateway")["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    assert gateway["lifecycle"]["preStop"]["sleep"]["seconds"] == pause_s
    assert pod["terminationGracePeriodSeconds"] == grace_s
    assert GatewaySettings.model_fields["MAX_WAIT_S"].default == long_poll_s
    for name in INFERENCE_OF.values():
        worker = objects.get("Deployment", name)["spec"]["template"]["spec"]
        assert worker["terminationGracePeriodSeconds"] == inference_s, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_cover_the_replicated_services(
    overlay: str, rendered: dict[str, Overlay]
) -> None:
    objects = rendered[overlay]
    for service in ("gateway", "inference", "inference-dermoscopy"):
        budget = objects.get("PodDisruptionBudget", f"skinscreen-{service}")["spec"]
        deployment = objects.get("Deployment", f"skinscreen-{service}")
        assert _matches(budget["selector"], _pod_labels(deployment))
        # Never 0: a budget that allows no eviction blocks every node drain.
        assert budget["maxUnavailable"] >= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_reach_every_service(overlay: str, rendered: dict[str, Overlay]) -> None:
    objects = rendered[overlay]
    for service in (*SERVICES, "inference-dermoscopy"):
        monitor = objects.get("ServiceMonitor", f"skinscreen-{service}")["spec"]
        (target,) = [
            s
            for s in objects.of_kind("Service")
            if _matches(monitor["selector"], s["metadata"].get("labels", {}))
        ]
        ports = {port["name"]: port for port in target["spec"]["ports"]}
        (endpoint,) = monitor["endpoints"]
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"
        deployment = objects.get("Deployment", f"skinscreen-{service}")
        assert _matches({"matchLabels": target["spec"]["selector"]}, _pod_labels(deployment))
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        container_ports = {port["name"] for port in container["ports"]}
        assert ports[endpoint["port"]]["targetPort"] in container_ports


def test_the_namespaces_enforce_the_restricted_pod_security_standard(
    rendered: dict[str, Overlay],
) -> None:
    for overlay in rendered.values():
        (namespace,) = overlay.of_kind("Namespace")
        name = namespace["metadata"]["name"]
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        for item in overlay.objects:
            assert item["metadata"].get("namespace", name) == name, item["metadata"]["name"]


def test_no_base_manifest_names_a_namespace() -> None:
    """Overlays choose the namespace; a hard-coded one in base would escape it."""
    for path in (K8S / "base").rglob("*.yaml"):
        assert "namespace:" not in path.read_text().replace("namespaceSelector", ""), path
