"""`rayalign env` against a real local Ray cluster (the session's); without one: tests/unit/test_env_cli.py,
which runs before any Ray of the suite is up (``auto`` finds any Ray running on the machine)."""

import os
import subprocess
import sys
from pathlib import Path

EXE = str(Path(sys.executable).parent / "rayalign")


def run_env(extra_env):
    env = {**os.environ, **extra_env}
    done = subprocess.run([EXE, "env"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return {line[:13].strip(): line[14:] for line in done.stdout.strip().splitlines()}


def test_env_reports_versions_devices_and_a_reachable_cluster(ray_local):
    import torch

    ray = ray_local
    info = run_env({"RAY_ADDRESS": ray.get_runtime_context().gcs_address})
    assert info["torch"] == torch.__version__ and info["ray"] == ray.__version__
    assert info["vllm"].startswith("0.32.0")
    assert info["devices"].startswith("no CUDA device" if not torch.cuda.is_available() else "1 CUDA")
    assert info["ray cluster"] == "reachable: 1 node(s), 2 CPU, 0 GPU"
