"""The stack from the images that `make images` built: every service in its own container,
run as its Kubernetes manifest runs it (skinscreen.dev.containers), on PostgreSQL and Redis in
containers of Debian's packages.

The suite's own tests run against it unchanged: this package overrides two fixtures, the
`servers` (containers instead of embedded servers) and the `launcher` (each service from its
image instead of a child process of this interpreter), and imports the rest by name.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from redis import Redis
from redis.exceptions import RedisError

from skinscreen.dev.containers import (
    ContainerSpec,
    container_spec,
    prepare_volumes,
    run_arguments,
)
from skinscreen.dev.embedded import free_port
from skinscreen.dev.images import DEFAULT_IMAGES, TAG, engine_env, image_exists
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
from tests.waiting import wait_until

SERVERS_IMAGE = f"localhost/skinscreen-dev-servers:{TAG}"
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
    missing = [name for name in DEFAULT_IMAGES if not image_exists(f"localhost/{name}:{TAG}")]
    if shutil.which("podman") is None or missing:
        pytest.fail(
            f"images not built: {', '.join(missing) or 'podman missing'}; run `make images` "
            "(make test does)",
            pytrace=False,
        )


def podman(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *arguments], env=engine_env(), check=check, capture_output=True, text=True
    )


def container_name(what: str) -> str:
    return f"skinscreen-test-{what}-{uuid.uuid4().hex[:8]}"


class ContainerProcess(Process):
    """A service in its container, started with `podman run` in the foreground: podman passes
    SIGTERM on to the service (as the kubelet sends it), and the container goes with it."""

    def __init__(
        self,
        spec: ContainerSpec,
        env: dict[str, str],
        log: Path,
        command: list[str] | None = None,
    ) -> None:
        super().__init__([], env, log)  # fills in METRICS_PORT
        self.spec = spec
        self.name = container_name(spec.container)
        # The test's own settings: those it set or changed, over the manifest's.
        self.settings = {
            key: value for key, value in self.env.items() if os.environ.get(key) != value
        }
        self.command = ["podman", *run_arguments(spec, self.name, self.settings, command=command)]

    def start(self) -> None:
        prepare_volumes(self.spec, self.settings)
        podman("rm", "--force", self.name, check=False)
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.command, env=engine_env(), stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        """SIGKILL to the service in its container, as an OOM kill."""
        podman("kill", "--signal", "KILL", self.name, check=False)
        assert self.popen is not None
        self.popen.wait(30)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            podman("rm", "--force", "--time", "5", self.name, check=False)


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
        command = list(spec.command)
        command[command.index("--port") + 1] = str(port)
        command[command.index("--host") + 1] = "127.0.0.1"
        return ContainerProcess(spec, env, log, [*command, *options])


@pytest.fixture(scope="session")
def launcher() -> Launcher:
    return ContainerLauncher()


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """PostgreSQL and Redis, each in a container of Debian's packages, on loopback."""
    database_port, redis_port = free_port(), free_port()
    names = [container_name("postgres"), container_name("redis")]
    podman("run", "--detach", "--rm", "--name", names[0], "--network", "host",
           "--user", "postgres", "--env", f"PGPORT={database_port}", SERVERS_IMAGE)  # fmt: skip
    podman("run", "--detach", "--rm", "--name", names[1], "--network", "host", "--user", "redis",
           SERVERS_IMAGE, "redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
           "--save", "", "--appendonly", "no")  # fmt: skip
    try:
        root = f"postgresql://skinscreen@127.0.0.1:{database_port}"

        def create_database() -> bool:
            async def create() -> None:
                connection = await asyncpg.connect(f"{root}/postgres")
                try:
                    await connection.execute("CREATE DATABASE skinscreen")
                finally:
                    await connection.close()

            try:
                asyncio.run(create())
            except (OSError, asyncpg.PostgresError):
                return False
            return True

        wait_until(create_database, lambda: podman("logs", names[0]).stdout, 60)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"

        def redis_answers() -> bool:
            client = Redis.from_url(redis_url)
            try:
                return bool(client.ping())
            except RedisError:
                return False
            finally:
                client.close()

        wait_until(redis_answers, lambda: podman("logs", names[1]).stdout, 30)
        yield Servers(database_url=f"{root}/skinscreen", redis_url=redis_url)
    finally:
        for name in names:
            podman("rm", "--force", "--time", "5", name, check=False)
