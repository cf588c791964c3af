"""`make run` keeps going when a service dies: skinscreen-stack starts it again, says so,
and the stack still screens; Ctrl-C still stops everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from skinscreen.dev.embedded import free_port
from tests.conftest import DESIGN_EXAMPLE, PAD_UFES, REPO
from tests.waiting import wait_until

from .test_decode_memory import process_tree

MODEL = "skinscreen-fusion"


def _worker(stack: int) -> int | None:
    """The pid of the stack's inference worker."""
    for pid in process_tree(stack)[1:]:
        try:
            if b"skinscreen.inference.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except FileNotFoundError:
            continue
    return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _key_line(log: Path, what: str) -> str:
    """The key `make run` printed on its line `API key (<what>): <key>`."""
    prefix = f"API key ({what}): "
    lines = [line for line in log.read_text().splitlines() if line.startswith(prefix)]
    assert lines, f"no line {prefix!r}; log:\n{log.read_text()[-4000:]}"
    return lines[-1].removeprefix(prefix)


def test_a_killed_worker_is_restarted_and_the_stack_still_screens(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    environ.pop("MODEL_NAME", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "stack.log"
    with log.open("wb") as output:
        stack = subprocess.Popen(
            [sys.executable, "-m", "skinscreen.dev.stack", "--data", str(tmp_path / "var"),
             "--port", str(port), "--models", MODEL],
            cwd=REPO, env=environ, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def says(text: str) -> bool:
            if stack.poll() is not None:
                raise RuntimeError(f"the stack exited; log:\n{log.read_text()[-4000:]}")
            return text in log.read_text(errors="replace")

        wait_until(lambda: says("skinscreen is running at"), lambda: log.read_text()[-4000:], 300)
        key = _key_line(log, "development clinic")
        assert key.startswith("sk_live_")
        assert _key_line(log, "operator").startswith("sk_live_")
        keys_file = tmp_path / "var" / "api-keys.json"
        assert keys_file.stat().st_mode & 0o777 == 0o600
        assert json.loads(keys_file.read_text())["clinician"] == key
        first = _worker(stack.pid)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_until(
            lambda: says(f"inference {MODEL} exited with code -9"), lambda: log.read_text()[-4000:]
        )
        wait_until(lambda: says(f"inference {MODEL} restarted"), lambda: log.read_text()[-4000:])
        second = _worker(stack.pid)
        assert second is not None
        assert second != first
        assert stack.poll() is None
        photo = sorted((PAD_UFES / "images").glob("*.jpg"))[0]
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            accepted = client.post(
                "/v1/screenings",
                files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                data={"clinical": json.dumps(DESIGN_EXAMPLE)},
            )
            assert accepted.status_code == 202, accepted.text
            location = accepted.headers["Location"]

            def finished() -> dict[str, Any] | None:
                answer: dict[str, Any] = client.get(location, params={"wait": 20}).json()
                return answer if answer["status"] in ("done", "failed") else None

            result = wait_until(finished, "the screening finished", 180)
        assert result is not None
        assert result["status"] == "done", result
        children = process_tree(stack.pid)[1:]
        assert children
        # Ctrl-C: the supervisor stops every service and exits cleanly.
        stack.send_signal(signal.SIGINT)
        assert stack.wait(120) == 0, log.read_text()[-4000:]
        wait_until(lambda: not any(_alive(pid) for pid in children), "every service stopped", 30)
    finally:
        if stack.poll() is None:
            stack.send_signal(signal.SIGINT)
            try:
                stack.wait(60)
            except subprocess.TimeoutExpired:
                stack.kill()
