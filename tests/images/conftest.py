"""The stack from the images that `make images` built: every service in its own container,
run as its Kubernetes manifest runs it (skinscreen.dev.containers), on PostgreSQL and Redis in
containers of Debian's packages.

The suite's own tests run against it unchanged: this package overrides two fixtures, the
`servers` (containers instead of embedded servers) and the `launcher` (each service from its
image instead of a child process of this interpreter), and imports the rest by name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skinscreen.dev.containers import (
    Container,
    ContainerSpec,
    container_spec,
    listening_on,
    start_servers,
    stop_servers,
)
from skinscreen.dev.embedded import free_port
from skinscreen.dev.images import missing_images
from skinscreen.runtime.artifacts import ArtifactStore, import_published
from tests.deploy.conftest import deploy_env  # noqa: F401  (a fixture, used by name)
from tests.serving.conftest import (  # noqa: F401  (fixtures, used by name)
    Launcher,
    Process,
    Servers,
    blob_dir,
    database,
    gateway,
    gateway_service,
    keys,
    lifecycle,
    model_store,
    photos,
    stack_env,
    submit_photo,
    worker,
)

# The Deployment and container that run each service (deploy/k8s/base).
GATEWAY = ("skinscreen-gateway", "gateway")
PRESTART = ("skinscreen-gateway", "prestart")
INFERENCE = ("skinscreen-inference", "inference")
# Every other served model has a Deployment of its own: skinscreen-inference-<model's suffix>.
MODEL_WORKERS = {"skinscreen-dermoscopy": ("skinscreen-inference-dermoscopy", "inference")}
TRAINER = ("skinscreen-trainer", "trainer")


@pytest.fixture(scope="session", autouse=True)
def images() -> None:
    """The images of `make images`; `make test` builds them before the suite runs."""
    missing = missing_images()
    if missing:
        pytest.fail(
            f"images not built: {', '.join(missing)}; run `make images` (make test does)",
            pytrace=False,
        )


def container_name(what: str) -> str:
    return f"skinscreen-test-{what}-{uuid.uuid4().hex[:8]}"


class ContainerProcess(Process):
    """A service in its container (skinscreen.dev.containers.Container), behind the interface
    the suite's tests use for a service process: its env, log, popen, start, stop and kill."""

    def __init__(
        self,
        spec: ContainerSpec,
        env: dict[str, str],
        log: Path,
        command: list[str] | None = None,
    ) -> None:
        super().__init__([], env, log)  # fills in METRICS_PORT
        # The test's own settings: those it set or changed, over the manifest's.
        settings = {key: value for key, value in self.env.items() if os.environ.get(key) != value}
        self.container = Container(container_name(spec.container), spec, settings, log, command)
        self.command = ["podman", *self.container.arguments]

    def start(self) -> None:
        self.container.start()
        self.popen = self.container.popen

    def kill(self) -> None:
        self.container.kill()

    def stop(self) -> None:
        self.container.stop(timeout_s=30)


class ContainerLauncher(Launcher):
    """Each service from its image, as its manifest runs it."""

    def prestart(self, env: dict[str, str]) -> None:
        env = dict(env)
        shipped = env.pop("SHIPPED_MODELS", None)
        if shipped is not None:
            # The manifests mount the store read-only in the pre-start step: models reach it
            # as an operator puts them there, and the step registers what it finds.
            import_published(ArtifactStore(env["MODEL_STORE"]), Path(shipped))
        log = Path(env["BLOB_DIR"]).parent / f"prestart-{uuid.uuid4().hex[:6]}.log"
        process = ContainerProcess(container_spec(*PRESTART), env, log)
        process.start()
        assert process.popen is not None
        code = process.popen.wait(180)
        assert code == 0, f"pre-start exited {code}; log:\n{log.read_text()[-4000:]}"

    def worker(self, env: dict[str, str], log: Path) -> Process:
        """The worker of the model env's MODEL_NAME names, from that model's Deployment."""
        workload = MODEL_WORKERS.get(env.get("MODEL_NAME", ""), INFERENCE)
        return ContainerProcess(container_spec(*workload), env, log)

    def trainer(self, env: dict[str, str], log: Path) -> Process:
        return ContainerProcess(container_spec(*TRAINER), env, log)

    def gateway(self, env: dict[str, str], log: Path, port: int, *options: str) -> Process:
        """The manifest's command on 127.0.0.1:`port` (host networking), with `options`."""
        spec = container_spec(*GATEWAY)
        return ContainerProcess(spec, env, log, [*listening_on(spec, port), *options])


@pytest.fixture(scope="session")
def launcher() -> Launcher:
    return ContainerLauncher()


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """PostgreSQL and Redis, each in a container of Debian's packages, on loopback."""
    prefix = container_name("server") + "-"
    try:
        database_url, redis_url = start_servers(prefix, free_port(), free_port())
        yield Servers(database_url=database_url, redis_url=redis_url)
    finally:
        stop_servers(prefix)
