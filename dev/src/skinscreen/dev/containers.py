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

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final

import asyncpg
import yaml
from redis import Redis
from redis.exceptions import RedisError

from .images import REPO, TAG, engine_env, podman

OVERLAY: Final = REPO / "deploy" / "k8s" / "overlays" / "dev"
# Debian's PostgreSQL and Redis (dev/containers/servers.Dockerfile), for a stack here.
SERVERS_IMAGE: Final = f"localhost/skinscreen-dev-servers:{TAG}"
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


def listening_on(spec: ContainerSpec, port: int, host: str = "127.0.0.1") -> list[str]:
    """The manifest's command (a server's: the gateway's) with its --host and --port
    replaced: on host networking each stack chooses its own port."""
    command = list(spec.command)
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = host
    return command


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


class Container:
    """A service's container, in the foreground of a `podman run` whose output goes to `log`:
    podman passes SIGTERM on to the service (as the kubelet sends it), and the container goes
    with it."""

    def __init__(self, name: str, spec: ContainerSpec, settings: Mapping[str, str],
                 log: Path, command: Sequence[str] | None = None) -> None:  # fmt: skip
        self.name = name
        self.spec = spec
        self.settings = settings
        self.log = log
        self.arguments = run_arguments(spec, name, settings, command=command)
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        prepare_volumes(self.spec, self.settings)
        podman("rm", "--force", self.name, check=False)
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(["podman", *self.arguments], env=engine_env(),
                                          stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def exited(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def kill(self) -> None:
        """SIGKILL to the service, as an OOM kill."""
        podman("kill", "--signal", "KILL", self.name, check=False)
        if self.popen is not None:
            self.popen.wait(30)

    def stop(self, timeout_s: float = 40) -> None:
        """SIGTERM, up to `timeout_s` to finish, then SIGKILL; the container is removed."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)  # podman passes it on to the service
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        podman("rm", "--force", self.name, check=False)


def start_servers(prefix: str, database_port: int, redis_port: int,
                  timeout_s: float = 60) -> tuple[str, str]:  # fmt: skip
    """PostgreSQL (its database `skinscreen` created) and Redis on loopback, in containers
    of skinscreen-dev-servers named `prefix`postgres and `prefix`redis: their URLs, once
    both answer. RuntimeError, with the server's log, if one does not within `timeout_s`."""
    stop_servers(prefix)
    podman("run", "--detach", "--rm", "--name", f"{prefix}postgres", "--network", "host",
           "--user", "postgres", "--env", f"PGPORT={database_port}", SERVERS_IMAGE)  # fmt: skip
    podman("run", "--detach", "--rm", "--name", f"{prefix}redis", "--network", "host",
           "--user", "redis", SERVERS_IMAGE, "redis-server", "--bind", "127.0.0.1",
           "--port", str(redis_port), "--save", "", "--appendonly", "no")  # fmt: skip
    root = f"postgresql://skinscreen@127.0.0.1:{database_port}"
    redis_url = f"redis://127.0.0.1:{redis_port}/0"

    async def create_database() -> None:
        connection = await asyncpg.connect(f"{root}/postgres", timeout=2)
        try:
            if not await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = 'skinscreen'"
            ):
                await connection.execute("CREATE DATABASE skinscreen")
        finally:
            await connection.close()

    def redis_answers() -> None:
        client = Redis.from_url(redis_url)
        try:
            client.ping()
        finally:
            client.close()

    deadline = time.monotonic() + timeout_s
    for server, answers in (("postgres", lambda: asyncio.run(create_database())),
                            ("redis", redis_answers)):  # fmt: skip
        while True:
            try:
                answers()
                break
            except (OSError, asyncpg.PostgresError, RedisError):
                if time.monotonic() > deadline:
                    log = podman("logs", f"{prefix}{server}", check=False)
                    raise RuntimeError(
                        f"{server} did not start:\n{log.stdout}{log.stderr}"
                    ) from None
                time.sleep(0.2)
    return f"{root}/skinscreen", redis_url


def stop_servers(prefix: str) -> None:
    podman("rm", "--force", "--time", "5", f"{prefix}postgres", f"{prefix}redis", check=False)
