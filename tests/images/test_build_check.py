"""An image that holds what it must not fails its build: the shipped Dockerfile's own last
step, run by podman on the built gateway image with a torch distribution slipped in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from skinscreen.dev.images import TAG, podman
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(300)


def image_check_step(dockerfile: Path) -> str:
    """The Dockerfile's RUN line that runs skinscreen.runtime.image_check, joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    (line,) = [line for line in text.splitlines() if "skinscreen.runtime.image_check" in line]
    return " ".join(line.split())


def build(context: Path, tag: str) -> tuple[int, str]:
    done = podman("build", "--network", "none", "--tag", tag, str(context), check=False)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("stray", [None, "torch"])
def test_the_gateways_image_check_fails_the_build_on_a_forbidden_distribution(
    tmp_path: Path, stray: str | None
) -> None:
    step = image_check_step(REPO / "services/gateway/Dockerfile")
    lines = [f"FROM localhost/skinscreen-gateway:{TAG}"]
    if stray is not None:
        # What a stray dependency leaves in site-packages: its distribution's metadata.
        info = tmp_path / f"{stray}-2.13.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {stray}\nVersion: 2.13.0\n")
        lines.append(f"COPY {info.name} /opt/skinscreen/lib/python3.11/site-packages/{info.name}")
    lines.append(step)
    (tmp_path / "Dockerfile").write_text("\n".join(lines) + "\n")
    tag = f"localhost/skinscreen-test-build-check:{stray or 'clean'}"
    try:
        code, output = build(tmp_path, tag)
    finally:
        podman("rmi", "--force", tag, check=False)
    if stray is None:
        assert code == 0, output
        assert "none of" in output
    else:
        assert code != 0, output
        assert f"{stray} 2.13.0 is installed, and this image must not hold it" in output
