"""The suite's own tests, run against the stack from the images (this package's conftest).

Each test below is imported from the module that defines it and runs here unchanged, on
containers run as the Kubernetes manifests run them: a screening end to end, a photo alone
through the image-only model's own worker (its own Deployment), a hot swap and a
rollback under traffic, a training run that the gate promotes and the workers then serve, and
SIGTERM to the gateway and to an inference worker with nothing in flight lost.
"""

from __future__ import annotations

import pytest

from skinscreen.dev.containers import container_spec, run_arguments
from skinscreen.dev.images import podman
from tests.deploy.test_graceful_shutdown import (  # noqa: F401  (collected here)
    test_gateway_finishes_requests_in_flight_and_takes_no_new_ones,
    test_inference_worker_finishes_its_batches_and_leaves_the_rest_queued,
)
from tests.serving.test_e2e import test_real_photos_match_a_direct_onnx_run  # noqa: F401
from tests.serving.test_image_only import (  # noqa: F401  (collected here, with fixtures)
    dermoscopy_photos,
    image_only_worker,
    test_a_photo_alone_is_screened_by_the_image_only_model,
)
from tests.serving.test_lifecycle import test_hot_swap_and_rollback_under_traffic  # noqa: F401
from tests.serving.test_training_runs import (  # noqa: F401  (collected here, with fixtures)
    client,
    test_a_run_that_must_be_promoted_is_promoted_and_served,
    trainer,
)

from .conftest import GATEWAY, INFERENCE, TRAINER, container_name

pytestmark = [pytest.mark.data, pytest.mark.timeout(900)]


# What each service's container may do, checked from inside it: the manifest's user, a
# read-only root filesystem with writable storage only at the manifest's emptyDir mounts, and
# none of the packages its image must not hold.
INSIDE = """
import importlib.util, os, sys
assert (os.getuid(), os.getgid()) == (10001, 10001), (os.getuid(), os.getgid())
for path in ("/opt/skinscreen/written", "/written", "/var/tmp/written"):
    try:
        open(path, "w").close()
    except OSError:
        pass
    else:
        sys.exit(f"{path} is writable")
open("/tmp/written", "w").close()
absent = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is not None]
assert not absent, absent
print("ok")
"""


@pytest.mark.parametrize(
    ("service", "absent"),
    [
        (GATEWAY, ["torch", "onnxruntime"]),
        (INFERENCE, ["torch", "fastapi"]),
        (TRAINER, ["fastapi"]),
    ],
)
def test_each_container_runs_as_its_manifest_says(
    service: tuple[str, str], absent: list[str]
) -> None:
    spec = container_spec(*service)
    name = container_name("inside")
    arguments = run_arguments(spec, name, {"DATABASE_URL": "postgresql://unused/none",
                                           "REDIS_URL": "redis://unused/0"},
                              command=["python", "-c", INSIDE, *absent])  # fmt: skip
    ran = podman(*arguments, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.strip() == "ok"
