"""GPU-tier fixtures: one local Ray holding the one GPU for the session (no dashboard: the device image
runs Ray's minimal install), and ``report``, which appends a test's measured numbers as one JSON line to
``$RAYALIGN_GPU_REPORT`` when that is set (the device script prints the file; the README quotes it)."""

import json
import os

import pytest


@pytest.fixture(scope="session")
def ray_gpu():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=8, num_gpus=1, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture()
def report(request):
    def write(**numbers) -> None:
        path = os.environ.get("RAYALIGN_GPU_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"test": request.node.name, **numbers}) + "\n")
    return write
