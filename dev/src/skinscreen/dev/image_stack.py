"""`make run-images`: the whole stack from the images `make images` built, on this machine.

What `make run` runs as child processes, each in its container instead, run as its
Kubernetes manifest runs it (skinscreen.dev.containers): PostgreSQL and Redis (Debian's, in
containers of skinscreen-dev-servers), the pre-start step in the gateway image, the gateway
on http://127.0.0.1:PORT, an inference worker per served model (skinscreen-inference and
skinscreen-inference-dermoscopy) and the trainer worker. Uploads, the artifact store (seeded
with the models shipped in models/) and training runs are folders of <data>; PostgreSQL's
data lives in its container and goes with it. Each container's output is in <data>/logs.
It prints the URL and two API keys, as `make run` does. Ctrl-C (or a container that exits)
stops everything: SIGTERM to each service, as the kubelet sends it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import asyncpg

from skinscreen.runtime.artifacts import ArtifactStore, import_published

from .containers import ContainerSpec, container_spec, prepare_volumes, run_arguments
from .embedded import free_port
from .images import DEFAULT_IMAGES, REPO, TAG, engine_env, image_exists
from .stack import KEYS_FILE, ensure_dev_keys

SERVERS_IMAGE: Final = f"localhost/skinscreen-dev-servers:{TAG}"
# (container name, Deployment, container) of each service, started in this order.
SERVICES: Final = (
    ("inference", "skinscreen-inference", "inference"),
    ("inference-dermoscopy", "skinscreen-inference-dermoscopy", "inference"),
    ("trainer", "skinscreen-trainer", "trainer"),
    ("gateway", "skinscreen-gateway", "gateway"),
)


def podman(*arguments: str, check: bool = True) -> str:
    done = subprocess.run(["podman", *arguments], env=engine_env(), check=check,
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout


class Container:
    """A service's container, in the foreground of a `podman run` whose output goes to a log."""

    def __init__(self, name: str, spec: ContainerSpec, settings: Mapping[str, str],
                 log: Path, command: list[str] | None = None) -> None:  # fmt: skip
        self.name = name
        self.spec = spec
        self.settings = settings
        self.log = log
        self.arguments = run_arguments(spec, self.name, settings, command=command)
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        prepare_volumes(self.spec, self.settings)
        podman("rm", "--force", self.name, check=False)
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(["podman", *self.arguments], env=engine_env(),
                                          stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def exited(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def stop(self, timeout_s: float = 40) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)  # podman passes it on to the service
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                podman("kill", self.name, check=False)
                self.popen.wait()
        podman("rm", "--force", self.name, check=False)


def start_servers(prefix: str, database_port: int, redis_port: int) -> tuple[str, str]:
    """PostgreSQL and Redis on loopback, in containers; their URLs once both answer."""
    podman("rm", "--force", f"{prefix}postgres", f"{prefix}redis", check=False)
    podman("run", "--detach", "--rm", "--name", f"{prefix}postgres", "--network", "host",
           "--user", "postgres", "--env", f"PGPORT={database_port}", SERVERS_IMAGE)  # fmt: skip
    podman("run", "--detach", "--rm", "--name", f"{prefix}redis", "--network", "host",
           "--user", "redis", SERVERS_IMAGE, "redis-server", "--bind", "127.0.0.1",
           "--port", str(redis_port), "--save", "", "--appendonly", "no")  # fmt: skip
    root = f"postgresql://skinscreen@127.0.0.1:{database_port}"

    async def create_database() -> None:
        connection = await asyncpg.connect(f"{root}/postgres", timeout=2)
        try:
            if not await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = 'skinscreen'"
            ):
                await connection.execute("CREATE DATABASE skinscreen")
        finally:
            await connection.close()

    deadline = time.monotonic() + 60
    while True:
        try:
            asyncio.run(create_database())
            break
        except (OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise SystemExit(
                    "PostgreSQL did not start: " + podman("logs", f"{prefix}postgres", check=False)
                ) from None
            time.sleep(0.5)
    return f"{root}/skinscreen", f"redis://127.0.0.1:{redis_port}/0"


def wait_ready(url: str, gateway: Container, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if gateway.exited() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the gateway did not become ready; see {gateway.log}")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="skinscreen-image-stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=REPO / "var" / "image-stack",
                        help="the volumes' and logs' folder (var/image-stack)")  # fmt: skip
    parser.add_argument("--port", type=int, default=8000, help="the gateway's port")
    parser.add_argument("--shipped", type=Path, default=REPO / "models",
                        help="published models to seed the artifact store with")  # fmt: skip
    parser.add_argument("--training-data", type=Path,
                        default=REPO.parent / "shared" / "data",
                        help="the folder of the training data sources (read-only)")  # fmt: skip
    args = parser.parse_args(argv)
    missing = [name for name in DEFAULT_IMAGES if not image_exists(f"localhost/{name}:{TAG}")]
    if missing:
        raise SystemExit(f"images not built: {', '.join(missing)}; run `make images` first")
    (args.data / "logs").mkdir(parents=True, exist_ok=True)
    # Containers named by the gateway's port: two stacks on one machine keep apart.
    prefix = f"skinscreen-stack-{args.port}-"
    containers: list[Container] = []
    try:
        database_url, redis_url = start_servers(prefix, free_port(), free_port())
        return serve(args, prefix, database_url, redis_url, containers)
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping", flush=True)
        for container in reversed(containers):
            container.stop()
        podman("rm", "--force", "--time", "5", f"{prefix}postgres", f"{prefix}redis",
               check=False)  # fmt: skip


def serve(args: argparse.Namespace, prefix: str, database_url: str, redis_url: str,
          containers: list[Container]) -> int:  # fmt: skip
    """Pre-start, then every service; until a container exits (its status: 1)."""
    data = args.data.resolve()
    logs = data / "logs"
    settings = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BLOB_DIR": str(data / "blobs"),
        "MODEL_STORE": str(data / "models"),
        "RUNS_DIR": str(data / "runs"),
        "TRAINING_DATA_DIR": str(args.training_data.resolve()),
        # The stack's own machine: limits far above what it serves (as `make run`).
        "RATE_LIMIT_SCREENINGS": "1000000/minute",
        "RATE_LIMIT_READS": "1000000/minute",
    }
    for uri in import_published(ArtifactStore(settings["MODEL_STORE"]), args.shipped):
        print(f"shipped model published at {uri}", flush=True)
    prestart = Container(f"{prefix}prestart", container_spec("skinscreen-gateway", "prestart"),
                         settings, logs / "prestart.log")  # fmt: skip
    prestart.start()
    assert prestart.popen is not None
    if prestart.popen.wait(300) != 0:
        raise SystemExit(f"the pre-start step failed; see {prestart.log}")
    url = f"http://127.0.0.1:{args.port}"
    for name, workload, in_pod in SERVICES:
        spec = container_spec(workload, in_pod)
        own = {**settings, "METRICS_PORT": str(free_port())}
        command = None
        if name == "gateway":
            command = list(spec.command)
            command[command.index("--port") + 1] = str(args.port)
            command[command.index("--host") + 1] = "127.0.0.1"
        containers.append(Container(prefix + name, spec, own, logs / f"{name}.log", command))
        containers[-1].start()
        print(f"started {name} ({spec.image}); its output: {containers[-1].log}", flush=True)
    wait_ready(url, containers[-1])
    keys = asyncio.run(ensure_dev_keys(database_url, data / KEYS_FILE))
    print(f"\nskinscreen, from its images, on {url} (API docs at {url}/docs)")
    print(f"API key (development clinic): {keys.clinician}")
    print(f"API key (operator): {keys.operator}")
    print("Ctrl-C stops it.", flush=True)
    while all(container.exited() is None for container in containers):
        time.sleep(1)
    gone = [container for container in containers if container.exited() is not None]
    print(f"{gone[0].name} exited ({gone[0].exited()}); see {gone[0].log}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
