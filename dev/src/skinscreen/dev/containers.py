"""The services from their images, each container run as its Kubernetes manifest runs it.

What a container gets is read from the rendered manifests (`kubectl kustomize` of an overlay,
dev by default), never restated here: the image, the command, the environment of its
ConfigMaps and literal values, the user and group, a read-only root filesystem, no
capabilities, no privilege escalation, and writable storage only where the manifest mounts a
volume (emptyDir volumes become tmpfs; persistent volumes are folders of this machine, read-only
where the manifest mounts them read-only). Secrets (DATABASE_URL, REDIS_URL) come from the caller.

Two things differ from a cluster, both for the machine rather than the service:
- host networking: each container listens on this machine's loopback, so ports (the gateway's,
  METRICS_PORT) are chosen by the caller;
- a persistent volume is mounted at its host folder's own path, and the settings that name the
  manifest's mount path (BLOB_DIR, MODEL_STORE, ...) are given that path: the registry then
  holds artifact paths that the host and every container read alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final

import yaml

from .images import REPO, TAG

OVERLAY: Final = REPO / "deploy" / "k8s" / "overlays" / "dev"
# A Kubernetes emptyDir without a size limit, as a tmpfs here.
DEFAULT_TMPFS_SIZE: Final = "1g"


@dataclass(frozen=True)
class Mount:
    path: str  # where the manifest mounts it
    read_only: bool
    claim: str | None  # the PersistentVolumeClaim's name; None for an emptyDir
    size_limit: str | None = None  # an emptyDir's sizeLimit


@dataclass(frozen=True)
class ContainerSpec:
    """One container of a workload, as its manifest defines it."""

    workload: str
    container: str
    image: str  # the local image built by `make images`
    command: tuple[str, ...]
    env: Mapping[str, str]  # ConfigMap values and literal values; secrets left out
    secrets: frozenset[str]  # the variables the manifest takes from Secrets
    user: str  # "uid:gid"
    read_only_root: bool
    drop_all_capabilities: bool
    no_new_privileges: bool
    mounts: tuple[Mount, ...] = field(default=())


@cache
def rendered(overlay: Path = OVERLAY) -> tuple[dict[str, Any], ...]:
    """The overlay's objects, as `kubectl kustomize` builds them."""
    kubectl = shutil.which(os.environ.get("KUBECTL", "kubectl"))
    if kubectl is None:
        raise SystemExit("kubectl not found (it brings kustomize); set KUBECTL to its path")
    built = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True
    )
    return tuple(item for item in yaml.safe_load_all(built.stdout) if item)


def local_image(reference: str) -> str:
    """The image `make images` built for a manifest's image: .../gateway:0.1.0 is
    localhost/skinscreen-gateway:local."""
    name = reference.rsplit("/", 1)[-1].split(":")[0]
    name = name if name.startswith("skinscreen-") else f"skinscreen-{name}"
    return f"localhost/{name}:{TAG}"


def container_spec(
    workload: str, container: str, objects: Sequence[dict[str, Any]] | None = None
) -> ContainerSpec:
    """`container` (or init container) of the Deployment `workload`."""
    objects = objects if objects is not None else rendered()
    (deployment,) = [
        item
        for item in objects
        if item["kind"] == "Deployment" and item["metadata"]["name"] == workload
    ]
    pod = deployment["spec"]["template"]["spec"]
    (spec,) = [
        item
        for item in [*pod.get("initContainers", []), *pod["containers"]]
        if item["name"] == container
    ]
    config_maps = {
        item["metadata"]["name"]: item.get("data", {})
        for item in objects
        if item["kind"] == "ConfigMap"
    }
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    secrets = set()
    for variable in spec.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
        elif "secretKeyRef" in variable.get("valueFrom", {}):
            secrets.add(variable["name"])
        else:
            raise ValueError(f"{workload}/{container}: {variable['name']} has no value here")
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = []
    for mount in spec.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim is None and "emptyDir" not in volume:
            raise ValueError(f"{workload}/{container}: volume {mount['name']} is neither a "
                             "claim nor an emptyDir")  # fmt: skip
        mounts.append(
            Mount(
                path=mount["mountPath"],
                read_only=bool(mount.get("readOnly", False)),
                claim=claim,
                size_limit=(volume.get("emptyDir") or {}).get("sizeLimit"),
            )
        )
    pod_security = pod.get("securityContext", {})
    security = {**pod_security, **spec.get("securityContext", {})}
    return ContainerSpec(
        workload=workload,
        container=container,
        image=local_image(spec["image"]),
        command=(*spec.get("command", []), *spec.get("args", [])),
        env=env,
        secrets=frozenset(secrets),
        user=f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}",
        read_only_root=bool(security.get("readOnlyRootFilesystem", False)),
        drop_all_capabilities="ALL" in security.get("capabilities", {}).get("drop", []),
        no_new_privileges=security.get("allowPrivilegeEscalation") is False,
        mounts=tuple(mounts),
    )


def tmpfs_size(limit: str | None) -> str:
    """A Kubernetes quantity (64Mi, 1Gi) as tmpfs's size option (64m, 1g)."""
    if limit is None:
        return DEFAULT_TMPFS_SIZE
    for suffix, unit in (("Ki", "k"), ("Mi", "m"), ("Gi", "g")):
        if limit.endswith(suffix):
            return limit.removesuffix(suffix) + unit
    return limit


def run_arguments(
    spec: ContainerSpec,
    name: str,
    settings: Mapping[str, str],
    *,
    command: Sequence[str] | None = None,
) -> list[str]:
    """`podman run`'s arguments for `spec` as container `name`.

    `settings` are the caller's values, over the manifest's: the secrets, and any setting the
    caller changes. A setting whose manifest value is a persistent volume's mount path names
    the host folder to mount there (at its own path); a volume the caller names no folder for is
    left out. Any other setting is passed as it is: a path in one that the container does not
    mount is not there for it. `command` replaces the manifest's (the gateway's port, say).
    """
    missing = spec.secrets - settings.keys()
    if missing:
        raise ValueError(f"{spec.workload}/{spec.container} needs {', '.join(sorted(missing))}")
    env = {**spec.env, **settings}
    arguments = [
        "run", "--rm", "--name", name,
        "--network", "host",
        # Kubernetes probes these services; podman's healthcheck timers need systemd.
        "--no-healthcheck",
        "--user", spec.user,
    ]  # fmt: skip
    if spec.read_only_root:
        # Only the manifest's volumes are writable: no tmpfs of podman's own on /tmp or /run.
        arguments += ["--read-only", "--read-only-tmpfs=false"]
    if spec.drop_all_capabilities:
        arguments += ["--cap-drop", "ALL"]
    if spec.no_new_privileges:
        arguments += ["--security-opt", "no-new-privileges"]
    for mount in spec.mounts:
        if mount.claim is None:
            mode = "ro" if mount.read_only else "rw"
            arguments += ["--tmpfs", f"{mount.path}:{mode},size={tmpfs_size(mount.size_limit)},"
                          f"mode=1777"]  # fmt: skip
    mounted: dict[str, Path] = {}
    for folder, mount in volume_folders(spec, settings):
        if mount.path in mounted:
            if mounted[mount.path] != folder:
                raise ValueError(
                    f"{mount.path} is given two folders: {mounted[mount.path]}, {folder}"
                )
            continue
        mounted[mount.path] = folder
        suffix = ":ro" if mount.read_only else ""
        arguments += ["--volume", f"{folder.resolve()}:{folder}{suffix}"]
    for key, value in sorted(env.items()):
        arguments += ["--env", f"{key}={value}"]
    return [*arguments, spec.image, *(command if command is not None else spec.command)]


def volume_folders(spec: ContainerSpec, settings: Mapping[str, str]) -> list[tuple[Path, Mount]]:
    """The host folders `run_arguments` mounts for `spec` under `settings`, with their mounts."""
    return [
        (Path(settings[key]), mount)
        for mount in spec.mounts
        if mount.claim is not None
        for key, value in spec.env.items()
        if value == mount.path and key in settings
    ]


def prepare_volumes(spec: ContainerSpec, settings: Mapping[str, str]) -> None:
    """Each volume's folder exists before the container mounts it, as a claim's volume does;
    and, as fsGroup does in the cluster, the volumes the service writes are its user's."""
    uid, gid = (int(part) for part in spec.user.split(":"))
    for folder, mount in volume_folders(spec, settings):
        folder.mkdir(parents=True, exist_ok=True)
        if not mount.read_only:
            for path in [folder, *folder.rglob("*")]:
                os.chown(path, uid, gid, follow_symlinks=False)
