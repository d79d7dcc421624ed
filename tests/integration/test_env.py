"""`rayalign env` against a real local Ray cluster, and without one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).parent / "rayalign")


def run_env(extra_env):
    env = {**os.environ, **extra_env}
    done = subprocess.run([EXE, "env"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return {line[:13].strip(): line[14:] for line in done.stdout.strip().splitlines()}


def test_env_reports_versions_devices_and_a_reachable_cluster():
    ray = pytest.importorskip("ray")
    import torch

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        info = run_env({"RAY_ADDRESS": ray.get_runtime_context().gcs_address})
    finally:
        ray.shutdown()
    assert info["torch"] == torch.__version__ and info["ray"] == ray.__version__
    assert info["vllm"].startswith("0.32.0")
    assert info["devices"].startswith("no CUDA device" if not torch.cuda.is_available() else "1 CUDA")
    assert info["ray cluster"] == "reachable: 1 node(s), 2 CPU, 0 GPU"


def test_env_without_a_cluster_says_so(tmp_path):
    info = run_env({"RAY_ADDRESS": "", "RAY_TMPDIR": str(tmp_path)})
    assert info["ray cluster"].startswith("none reachable")
