"""The last step of every image build (skinscreen.runtime.image_check): it must fail the build
when the service does not import or the image holds a forbidden distribution, and name it."""

from __future__ import annotations

import subprocess
import sys

CHECK = [sys.executable, "-m", "skinscreen.runtime.image_check"]


def test_an_image_with_what_it_needs_and_nothing_forbidden_passes() -> None:
    done = subprocess.run([*CHECK, "--imports", "json", "skinscreen.core.clinical",
                           "--absent", "no-such-distribution", "tensorflow"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 modules import, none of 2 forbidden distributions is installed" in done.stdout


def test_a_module_that_does_not_import_fails_the_build_and_is_named() -> None:
    done = subprocess.run([*CHECK, "--imports", "json", "skinscreen.no_such_service"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 1
    assert "skinscreen.no_such_service does not import: ModuleNotFoundError" in done.stderr


def test_a_forbidden_distribution_fails_the_build_and_is_named_with_its_version() -> None:
    # pytest is installed here; its name is compared as PEP 503 normalises it.
    done = subprocess.run([*CHECK, "--absent", "PyTest", "no-such-distribution"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 1
    assert "PyTest 9." in done.stderr
    assert "must not hold it" in done.stderr
    assert "no-such-distribution" not in done.stderr
