"""`make run`: the whole stack on one machine, stopped cleanly with Ctrl-C.

Starts an embedded PostgreSQL and redis-server in a local data folder when
DATABASE_URL / REDIS_URL are unset, runs the gateway's pre-start step
(migrations, models shipped in ./models registered), then an inference
worker per served model (by default every model shipped in ./models), the
trainer worker (when installed) and the gateway, and prints the URL. It runs
the services as child processes, so it needs them installed but imports none
of them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Final

from skinscreen.runtime.artifacts import ArtifactStore
from skinscreen.runtime.commands import (
    PRESTART_COMMAND,
    TRAINER_COMMAND,
    WORKER_COMMAND,
    gateway_command,
)
from skinscreen.runtime.queue import DEFAULT_MODEL_NAME

from .embedded import EmbeddedPostgres, EmbeddedRedis, free_port

# The packages the stack runs, and the workspace members that hold them.
SERVICES: Final = {
    "skinscreen.gateway": "services/gateway",
    "skinscreen.inference": "services/inference",
}


def check_services_installed() -> None:
    """Refuse to start half a stack: name the service that is missing and how to install it."""
    missing = [folder for package, folder in SERVICES.items() if find_spec(package) is None]
    if missing:
        raise RuntimeError(
            "the stack runs the gateway and the inference worker; not installed: "
            + ", ".join(missing)
            + "; install the workspace's lock with: make install"
        )


class Stack:
    """Servers, pre-start, worker and gateway as child processes; `stop()` undoes `start()`."""

    def __init__(
        self,
        data: Path,
        host: str,
        port: int,
        environ: Mapping[str, str] | None = None,
        log: Path | None = None,
        with_trainer: bool = True,
        models: Sequence[str] = (),
    ) -> None:
        """`models`: those served, an inference worker each; none given: MODEL_NAME's."""
        self.url = f"http://{host}:{port}"
        self.host = host
        self.port = port
        self.env = dict(os.environ if environ is None else environ)
        self.env.setdefault("BLOB_DIR", str(data / "blobs"))
        # Versions trained here are published beside the data, never into the repo's models/,
        # which only seeds the store.
        self.env.setdefault("MODEL_STORE", str(data / "models"))
        self.env.setdefault("RUNS_DIR", str(data / "runs"))
        if Path("models").is_dir():
            self.env.setdefault("SHIPPED_MODELS", "models")
        self.with_trainer = with_trainer and find_spec("skinscreen.trainer") is not None
        self.models = list(models) or [self.env.get("MODEL_NAME", DEFAULT_MODEL_NAME)]
        self.data = data
        self._postgres = EmbeddedPostgres(data / "postgres")
        self._redis = EmbeddedRedis(data / "redis")
        self.processes: list[subprocess.Popen[bytes]] = []
        self.metrics: dict[str, str] = {}
        # None: the services write to this terminal; a path: they append to that file.
        self.log = log

    def start(self, ready_timeout_s: float = 120.0) -> None:
        check_services_installed()
        if not self.env.get("DATABASE_URL"):
            self.env["DATABASE_URL"] = self._postgres.start()
            print(f"embedded PostgreSQL in {self.data / 'postgres'}", flush=True)
        if not self.env.get("REDIS_URL"):
            self.env["REDIS_URL"] = self._redis.start()
            print(f"embedded Redis at {self.env['REDIS_URL']}", flush=True)
        output = None if self.log is None else self.log.open("ab")
        subprocess.run(PRESTART_COMMAND, env=self.env, check=True, stdout=output, stderr=output)
        # Own process groups: Ctrl-C reaches only the supervisor, which stops them in order.
        gateway = gateway_command(self.host, self.port, "--no-access-log")
        workers = [
            (f"inference {model}", WORKER_COMMAND, {"MODEL_NAME": model}) for model in self.models
        ]
        if self.with_trainer:
            workers.append(("trainer", TRAINER_COMMAND, {}))
        commands = []
        for name, command, env in workers:
            # One machine, several workers: each serves its /metrics on a port of its own.
            port = free_port()
            self.metrics[name] = f"http://{self.host}:{port}/metrics"
            commands.append((command, {**self.env, **env, "METRICS_PORT": str(port)}))
        commands.append((gateway, self.env))
        self.metrics["gateway"] = f"{self.url}/metrics"
        for command, env in commands:
            self.processes.append(
                subprocess.Popen(
                    command, env=env, start_new_session=True, stdout=output, stderr=output
                )
            )
        if output is not None:
            output.close()  # the children hold their own copies
        self._wait_ready(ready_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.running():
                raise RuntimeError("a service exited while the stack was starting")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}/readyz did not answer 200 in {timeout_s:.0f} s")
            time.sleep(0.5)

    def running(self) -> bool:
        return all(process.poll() is None for process in self.processes)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM in reverse start order (the gateway first, so no new work arrives)."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        self._redis.stop()
        self._postgres.stop()


def served_models(shipped: Path) -> list[str]:
    """Every model shipped in `shipped`, the default one first (it always is served)."""
    names = {DEFAULT_MODEL_NAME, *ArtifactStore(shipped).names()}
    return sorted(names, key=lambda name: (name != DEFAULT_MODEL_NAME, name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("var"), help="embedded servers' folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--models",
        help="comma-separated models to serve, an inference worker each "
        "(default: every model shipped in ./models)",
    )
    args = parser.parse_args(argv)

    # SIGTERM (docker stop, kill) stops the stack the way Ctrl-C does; SIGINT is set
    # explicitly because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    models = args.models.split(",") if args.models else served_models(Path("models"))
    stack = Stack(args.data, args.host, args.port, models=models)
    try:
        stack.start()
        print(f"skinscreen is running at {stack.url} (Ctrl-C stops it)")
        print(f"API docs: {stack.url}/docs", flush=True)
        for name, url in stack.metrics.items():
            print(f"metrics ({name}): {url}", flush=True)
        while stack.running():
            time.sleep(0.5)
        print("a service exited; stopping the stack", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping skinscreen", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"skinscreen-stack: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
