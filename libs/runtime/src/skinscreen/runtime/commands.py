"""How each service process is started: one definition for the pods and the local stack.

The Kubernetes manifests (deploy/k8s) start the services with these commands, run by
the image's `python`; `skinscreen-stack` (`make run`, in skinscreen-dev) and the test
fixtures start them the same way with this interpreter. tests/deploy/k8s pins that the
manifests agree.
"""

from __future__ import annotations

import sys

PRESTART_COMMAND = [sys.executable, "-m", "skinscreen.gateway.prestart"]
WORKER_COMMAND = [sys.executable, "-m", "skinscreen.inference.worker"]
TRAINER_COMMAND = [sys.executable, "-m", "skinscreen.trainer.worker"]


def gateway_command(host: str, port: int, *options: str) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--factory", "skinscreen.gateway.main:create_app",
        "--host", host, "--port", str(port), *options,
    ]  # fmt: skip
