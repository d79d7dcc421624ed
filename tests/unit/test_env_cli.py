"""`rayalign env` with no Ray cluster to reach (the unit tier runs before the suite's Ray is up)."""

import os
import subprocess
import sys
from pathlib import Path

EXE = str(Path(sys.executable).parent / "rayalign")


def test_env_without_a_cluster_says_so(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": str(tmp_path)}
    done = subprocess.run([EXE, "env"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    info = {line[:13].strip(): line[14:] for line in done.stdout.strip().splitlines()}
    assert info["ray cluster"].startswith("none reachable")
