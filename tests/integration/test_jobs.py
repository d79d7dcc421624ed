"""Issue 13: rayalign as a Ray job on a cluster, as users submit it. The test starts its own Ray head
(127.0.0.1, free ports, its own temp dir) and tears down only the processes it started (never
``ray stop``, which would end every Ray on the machine). SFT through ``ray job submit``, GRPO through
``JobSubmissionClient``; a bad config ends FAILED with its one-line error in the logs; ``ray job stop`` of a
GRPO job leaves a complete checkpoint and a second job resumes from it."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from rayalign.checkpoint import checkpoints, problem
from rayalign.config_io import with_overrides
from rayalign.metrics import read_metrics
from rl_helpers import grpo_recipe, prompt_file
from tests.integration.conftest import free_port
from train_helpers import recipe

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head():
    """(dashboard address, env with rayalign on PATH, metrics export port) of a Ray head this module starts
    and ends."""
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    dash, metrics = free_port(), free_port()
    # Ray 2.60 clusters use token auth by default; clients send ~/.ray/auth_token with RAY_AUTH_MODE=token
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_API_SERVER_ADDRESS", None)
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"  # this process's JobSubmissionClient and State API calls
    starter = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={free_port()}", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=open(Path(temp) / "start.log", "w"))
    try:
        _wait_up(f"http://127.0.0.1:{dash}", starter, Path(temp) / "start.log")
        yield f"http://127.0.0.1:{dash}", env, metrics
    finally:
        try:
            started = psutil.Process(starter.pid).children(recursive=True) + [psutil.Process(starter.pid)]
        except psutil.NoSuchProcess:
            started = []
        starter.terminate()
        _, alive = psutil.wait_procs(started, timeout=10)
        for proc in alive:
            proc.kill()
        shutil.rmtree(temp, ignore_errors=True)
        if before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = before


def _wait_up(address: str, starter: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + timeout
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            return
        except Exception as exc:
            if time.time() > deadline or starter.poll() is not None:
                raise RuntimeError(f"the test's Ray head did not come up ({exc}); ray start said:\n"
                                   f"{log.read_text()[-3000:]}") from None
            time.sleep(1)


def submit(head, cwd: Path, *entrypoint: str, timeout=600) -> subprocess.CompletedProcess:
    """``ray job submit --working-dir . -- ENTRYPOINT`` (waits for the job; its logs on stdout)."""
    address, env, _ = head
    return subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
                           *entrypoint], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def role_series(port: int) -> list[tuple[str, dict]]:
    """(name, labels) of the ``rayalign`` series on a node's Prometheus export."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        match = re.match(r"(ray_rayalign_\w+)\{(.*)\} ", line)
        if match:
            found.append((match[1], dict(re.findall(r'(\w+)="([^"]*)"', match[2]))))
    return found


def wait_status(client, job_id: str, timeout=600) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still {status} after {timeout} s")


def test_sft_job_and_a_bad_config_through_ray_job_submit(head, tiny_model_dir, task_files, tmp_path):
    from ray.job_submission import JobSubmissionClient

    out = tmp_path / "out"  # absolute: the job runs in Ray's own copy of the working dir
    cfg = recipe(str(tiny_model_dir), "sft", task_files["sft"], str(out), max_steps=6, save_steps=3)
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg))
    done = submit(head, tmp_path, "rayalign", "train", "-c", "sft.yaml")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "succeeded" in done.stdout.lower() and "final model in" in done.stdout
    assert [m["step"] for m in read_metrics(out)][-1] == 6 and (out / "final" / "model.safetensors").is_file()
    job_id = next(line.split("'")[1] for line in done.stdout.splitlines() if "submitted successfully" in line)
    logs = JobSubmissionClient(head[0]).get_job_logs(job_id)
    assert "train" in logs and "final model in" in logs  # `ray job logs` shows the run's progress

    cfg["training"]["learning_rate"] = "fast"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    bad = submit(head, tmp_path, "rayalign", "train", "-c", "bad.yaml")
    assert bad.returncode != 0
    assert "failed" in bad.stdout.lower()
    assert re.search(r"\nerror: bad\.yaml:\d+: training\.learning_rate: Input should be a valid number", bad.stdout), \
        bad.stdout[-3000:]
    assert "Traceback" not in bad.stdout


def test_grpo_job_stopped_then_resumed_through_the_python_client(head, tiny_model_dir, tmp_path):
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head[0])
    out = tmp_path / "out"
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), out, learners=1, kl_coef=0.0, max_steps=300,
                      save_steps=1000, logging_steps=1)
    cfg = with_overrides(cfg, {"reward.functions": [{"name": "boxed_answer"}]})  # built in: the job imports it
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    # the step in flight finishes and is checkpointed before Ray's SIGKILL (default: 3 s after SIGTERM)
    runtime_env = {"working_dir": str(tmp_path), "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "120"}}
    job_id = client.submit_job(entrypoint="rayalign train -c grpo.yaml", runtime_env=runtime_env)
    deadline, series = time.time() + 300, []
    while time.time() < deadline and (len(read_metrics(out)) < 2 or not series):
        assert str(client.get_job_status(job_id).value) in ("PENDING", "RUNNING"), client.get_job_logs(job_id)
        series = role_series(head[2])
        time.sleep(1)
    from ray.util.state import list_actors

    alive = {a.name for a in list_actors(address=head[0], filters=[("state", "=", "ALIVE")], limit=1000)}
    client.stop_job(job_id)
    [run] = {name.split(":")[1] for name in alive if name and name.startswith("rayalign:")}
    assert re.fullmatch(r"out-[0-9a-f]{4}", run), alive  # the output_dir's name and a 4-hex run id
    assert {f"rayalign:{run}:rollout-0", f"rayalign:{run}:learner-0", f"rayalign:{run}:reward-0"} <= alive, alive
    # the dashboard reads like the architecture: per-role series on Ray's metrics export, named actors
    assert {"rollout", "reward", "learner"} <= {labels["role"] for name, labels in series
                                                 if name == "ray_rayalign_phase_seconds"}, series
    assert any(name == "ray_rayalign_tokens_per_second" and labels["role"] == "rollout" for name, labels in series)
    assert wait_status(client, job_id) == "STOPPED"
    [ckpt] = checkpoints(out)
    assert problem(ckpt) is None
    stopped_at = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert "--resume" in client.get_job_logs(job_id)

    cfg = with_overrides(cfg, {"training.max_steps": stopped_at + 2})
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    resumed = client.submit_job(entrypoint="rayalign train -c grpo.yaml --resume", runtime_env=runtime_env)
    assert wait_status(client, resumed) == "SUCCEEDED", client.get_job_logs(resumed)[-3000:]
    assert [m["step"] for m in read_metrics(out)] == list(range(1, stopped_at + 3))


def test_the_driver_script_as_a_ray_job(head, tmp_path):
    """Issue 22: ``examples/driver.py`` submitted with ``JobSubmissionClient``: on the job's cluster every API call
    joins the job's Ray, and the job succeeds with the driver's report in its logs."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head[0])
    examples = Path(__file__).resolve().parents[2] / "examples"
    job_id = client.submit_job(entrypoint=f"python driver.py --out {tmp_path / 'run'} --quick --port {free_port()}",
                               runtime_env={"working_dir": str(examples)})
    assert wait_status(client, job_id) == "SUCCEEDED", client.get_job_logs(job_id)[-3000:]
    logs = client.get_job_logs(job_id)
    assert "dpo: held-out accuracy" in logs and "asked about 'carrot', it said" in logs
    assert (tmp_path / "run" / "dpo" / "final" / "model.safetensors").is_file()
