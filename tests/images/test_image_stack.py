"""`make run-images` (skinscreen-image-stack) as a user runs it: it prints the URL and a key,
screens a real photo with the default model and another with the image-only one, and Ctrl-C
stops every container it started."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from skinscreen.dev.embedded import free_port
from skinscreen.dev.images import podman
from tests.conftest import DESIGN_EXAMPLE, HAM10000, PAD_UFES
from tests.waiting import wait_until

pytestmark = [pytest.mark.data, pytest.mark.timeout(600)]


def test_the_stack_from_the_images_screens_photos_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "stack.log"
    with log.open("w") as output:
        stack = subprocess.Popen(
            [sys.executable, "-m", "skinscreen.dev.image_stack", "--data", str(tmp_path / "data"),
             "--port", str(port), "--training-data", str(PAD_UFES.parent)],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def printed_keys() -> str | None:
            if stack.poll() is not None:
                raise AssertionError(f"it exited {stack.returncode}:\n{log.read_text()}")
            found = re.search(r"API key \(development clinic\): (\S+)", log.read_text())
            return found.group(1) if found else None

        key = wait_until(printed_keys, lambda: log.read_text(), 300)
        assert f"on http://127.0.0.1:{port}" in log.read_text()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60
        ) as client:
            photo = sorted((PAD_UFES / "images").glob("*.jpg"))[0]
            fusion = client.post(
                "/v1/screenings",
                files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                data={"clinical": json.dumps(DESIGN_EXAMPLE)},
            )
            assert fusion.status_code == 202, fusion.text
            dermoscopy_photo = sorted((HAM10000 / "images").glob("*.jpg"))[0]
            image_only = client.post(
                "/v1/screenings",
                files={
                    "image": (dermoscopy_photo.name, dermoscopy_photo.read_bytes(), "image/jpeg")
                },
                data={"model": "skinscreen-dermoscopy"},
            )
            assert image_only.status_code == 202, image_only.text
            for accepted, model in (
                (fusion, "skinscreen-fusion"),
                (image_only, "skinscreen-dermoscopy"),
            ):
                done = client.get(accepted.headers["Location"], params={"wait": 30}).json()
                assert done["status"] == "done", done
                assert done["model"] == model
                assert 0.0 <= done["result"]["cancer_probability"] <= 1.0
        stack.send_signal(signal.SIGINT)
        assert stack.wait(180) == 0, log.read_text()
    finally:
        if stack.poll() is None:
            stack.kill()
            stack.wait()
    left = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
    assert not [name for name in left if name.startswith(f"skinscreen-stack-{port}-")], left
