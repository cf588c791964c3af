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
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

from skinscreen.runtime.artifacts import ArtifactStore, import_published

from .containers import Container, container_spec, listening_on, start_servers, stop_servers
from .embedded import free_port
from .images import REPO, missing_images
from .stack import KEYS_FILE, ensure_dev_keys

# (container name, Deployment, container) of each service, started in this order.
SERVICES: Final = (
    ("inference", "skinscreen-inference", "inference"),
    ("inference-dermoscopy", "skinscreen-inference-dermoscopy", "inference"),
    ("trainer", "skinscreen-trainer", "trainer"),
    ("gateway", "skinscreen-gateway", "gateway"),
)


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
    missing = missing_images()
    if missing:
        raise SystemExit(f"images not built: {', '.join(missing)}; run `make images` first")
    (args.data / "logs").mkdir(parents=True, exist_ok=True)
    # Containers named by the gateway's port: two stacks on one machine keep apart.
    prefix = f"skinscreen-stack-{args.port}-"
    containers: list[Container] = []
    try:
        try:
            database_url, redis_url = start_servers(prefix, free_port(), free_port())
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        return serve(args, prefix, database_url, redis_url, containers)
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping", flush=True)
        for container in reversed(containers):
            container.stop()
        stop_servers(prefix)


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
        command = listening_on(spec, args.port) if name == "gateway" else None
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
