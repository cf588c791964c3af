"""`make run`: the whole stack on one machine, stopped cleanly with Ctrl-C.

Starts an embedded PostgreSQL and redis-server in a local data folder when
DATABASE_URL / REDIS_URL are unset, runs the gateway's pre-start step
(migrations, models shipped in ./models registered), then an inference
worker per served model (by default every model shipped in ./models), the
trainer worker (when installed) and the gateway, and prints the URL and two
API keys: a clinician key of the "development clinic" and an operator key,
created on the first start and kept in <data>/api-keys.json (mode 0600) for
the next ones. It runs
the services as child processes, so it needs them installed but imports none
of them.

It supervises them: a service that exits is started again, with a line naming
it and its exit code, after a pause that doubles with each quick crash (1 s up
to 30 s); one that crashes MAX_QUICK_CRASHES times in a row, each within
QUICK_CRASH_S of its start, is given up on and the stack stops. Ctrl-C stops
everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Final

import asyncpg

from skinscreen.runtime import accounts
from skinscreen.runtime.accounts import Scope
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


# A crash this soon after a start counts as quick; MAX_QUICK_CRASHES of them in a row: give up.
QUICK_CRASH_S: Final = 30.0
MAX_QUICK_CRASHES: Final = 5
RESTART_DELAY_S: Final = 1.0
MAX_RESTART_DELAY_S: Final = 30.0


DEV_CLINIC: Final = "development clinic"
KEYS_FILE: Final = "api-keys.json"
DEV_RATE_LIMIT: Final = "1000000/minute"


@dataclass(frozen=True)
class DevKeys:
    """The development stack's API keys: a clinician key of DEV_CLINIC, an operator key."""

    clinician: str
    operator: str


async def _usable(connection: asyncpg.Connection, secret: object, scope: Scope) -> bool:
    if not isinstance(secret, str):
        return False
    found = await accounts.authenticate(connection, secret)
    return found is not None and found.usable and scope in found.scopes


async def ensure_dev_keys(database_url: str, path: Path) -> DevKeys:
    """The keys saved in `path` when the database still accepts them; new ones otherwise
    (the first start, a fresh database, a key revoked), saved there, readable by the user
    alone."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    saved = saved if isinstance(saved, dict) else {}
    connection = await asyncpg.connect(database_url)
    try:
        keys = {}
        for name, scope in (("clinician", Scope.CLINICIAN), ("operator", Scope.OPERATOR)):
            if await _usable(connection, saved.get(name), scope):
                keys[name] = saved[name]
                continue
            clinic = None
            if scope is Scope.CLINICIAN:
                clinic = await accounts.clinic_by_name(connection, DEV_CLINIC)
                if clinic is None:
                    clinic = await accounts.create_clinic(connection, DEV_CLINIC)
            created = await accounts.create_key(
                connection,
                scopes=[scope],
                clinic_id=None if clinic is None else clinic.id,
                name=f"skinscreen-stack ({name})",
            )
            keys[name] = created.secret
        # Limits far above what one machine serves: `make bench` and the README's loops
        # measure the service, not its rate limits (those are tested in tests/serving).
        clinic = await accounts.clinic_by_name(connection, DEV_CLINIC)
        if clinic is not None:
            await accounts.update_clinic(
                connection,
                clinic.id,
                {"rate_limit_screenings": DEV_RATE_LIMIT, "rate_limit_reads": DEV_RATE_LIMIT},
            )
    finally:
        await connection.close()
    if keys != saved:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(keys, file, indent=2)
    os.chmod(path, 0o600)
    return DevKeys(**keys)


class ServiceGaveUpError(RuntimeError):
    """A service kept crashing right after each start: restarting it again would not help."""


@dataclass
class Service:
    """One supervised child process: how to start it and how it has fared."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path | None
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_crashes: int = 0
    restart_at: float | None = field(default=None)

    def start(self) -> None:
        output = None if self.log is None else self.log.open("ab")
        try:
            # Its own process group: Ctrl-C reaches only the supervisor, which stops it in order.
            self.process = subprocess.Popen(
                self.command, env=self.env, start_new_session=True, stdout=output, stderr=output
            )
        finally:
            if output is not None:
                output.close()  # the child holds its own copy
        self.started_at = time.monotonic()
        self.restart_at = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


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
        self.services: list[Service] = []
        self.metrics: dict[str, str] = {}
        # Set by start().
        self.api_keys: DevKeys | None = None
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
        try:
            subprocess.run(PRESTART_COMMAND, env=self.env, check=True, stdout=output, stderr=output)
        finally:
            if output is not None:
                output.close()
        self.api_keys = asyncio.run(
            ensure_dev_keys(self.env["DATABASE_URL"], self.data / KEYS_FILE)
        )
        gateway = gateway_command(self.host, self.port, "--no-access-log")
        workers = [
            (f"inference {model}", WORKER_COMMAND, {"MODEL_NAME": model}) for model in self.models
        ]
        if self.with_trainer:
            workers.append(("trainer", TRAINER_COMMAND, {}))
        for name, command, env in workers:
            # One machine, several workers: each serves its /metrics on a port of its own.
            port = free_port()
            self.metrics[name] = f"http://{self.host}:{port}/metrics"
            environment = {**self.env, **env, "METRICS_PORT": str(port)}
            self.services.append(Service(name, command, environment, self.log))
        # The gateway's /metrics is on a port of its own too, never on the API's.
        port = free_port()
        self.metrics["gateway"] = f"http://{self.host}:{port}/metrics"
        gateway_env = {**self.env, "METRICS_PORT": str(port)}
        self.services.append(Service("gateway", gateway, gateway_env, self.log))
        for service in self.services:
            service.start()
        self._wait_ready(ready_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.supervise()
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}/readyz did not answer 200 in {timeout_s:.0f} s")
            time.sleep(0.5)

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        """The services' current processes, in start order."""
        return [service.process for service in self.services if service.process is not None]

    def running(self) -> bool:
        return all(service.alive() for service in self.services)

    def supervise(self) -> None:
        """Start again each service that exited, once its pause is over; ServiceGaveUpError
        when one crashed MAX_QUICK_CRASHES times in a row right after starting."""
        now = time.monotonic()
        for service in self.services:
            if service.process is None or service.alive():
                continue
            if service.restart_at is None:
                code = service.process.returncode
                ran_s = now - service.started_at
                service.quick_crashes = service.quick_crashes + 1 if ran_s < QUICK_CRASH_S else 1
                if service.quick_crashes >= MAX_QUICK_CRASHES:
                    raise ServiceGaveUpError(
                        f"{service.name} exited with code {code} {service.quick_crashes} times "
                        f"in a row, each within {QUICK_CRASH_S:.0f} s of its start; giving up"
                    )
                delay = min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2 ** (service.quick_crashes - 1))
                service.restart_at = now + delay
                print(
                    f"skinscreen-stack: {service.name} exited with code {code} after "
                    f"{ran_s:.0f} s; restarting it in {delay:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            elif now >= service.restart_at:
                service.start()
                assert service.process is not None
                print(
                    f"skinscreen-stack: {service.name} restarted (pid {service.process.pid})",
                    file=sys.stderr,
                    flush=True,
                )

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
        self.services.clear()
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
        assert stack.api_keys is not None
        # Kept in <data>/api-keys.json: the same keys on the next start.
        print(f"API key (development clinic): {stack.api_keys.clinician}", flush=True)
        print(f"API key (operator): {stack.api_keys.operator}", flush=True)
        for name, url in stack.metrics.items():
            print(f"metrics ({name}): {url}", flush=True)
        while True:
            stack.supervise()
            time.sleep(0.5)
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
