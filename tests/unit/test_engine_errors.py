"""What a user reads when an engine dies: the root cause its processes logged (one line), the role and
worker that held it, and the CLI's one block with exit 1 (issue 11)."""

import logging
import re

import pytest
import ray

from rayalign.engines import vllm_errors
from rayalign.engines.base import EngineDied
from rayalign.errors import RunError
from rayalign.workers.rollout import RolloutFailed


def _bookkeeping_sync():
    raise RuntimeError("CPU Generator does not use offset")


def test_engine_processes_log_their_root_cause(tmp_path, monkeypatch):
    monkeypatch.setenv(vllm_errors.ENV, str(tmp_path / "errors.jsonl"))
    vllm_errors.record_errors()
    vllm_errors.record_errors()  # vLLM may load plugins twice in a process: one handler all the same
    logger = logging.getLogger("vllm.v1.engine.core")
    try:
        try:
            try:
                _bookkeeping_sync()
            except RuntimeError as exc:  # the engine core re-raises the worker's failure in its own words
                raise RuntimeError("Worker failed with error 'CPU Generator does not use offset'") from exc
        except RuntimeError:
            logger.exception("EngineCore encountered a fatal error.")
        logger.error("no exception attached: not a root cause")
        line = vllm_errors.root_cause(tmp_path / "errors.jsonl")
    finally:
        for h in [h for h in logging.getLogger("vllm").handlers if isinstance(h, vllm_errors._ErrorFile)]:
            logging.getLogger("vllm").removeHandler(h)
    # the innermost exception and its frame (paths under site-packages are shortened to the package's)
    assert re.fullmatch(r"RuntimeError: CPU Generator does not use offset \(/\S+/tests/unit/test_engine_errors\.py:"
                        r"\d+, in _bookkeeping_sync; in MainProcess\)", line), line


def test_no_logged_error_means_killed_from_outside(tmp_path):
    (tmp_path / "errors.jsonl").write_text("")
    assert vllm_errors.root_cause(tmp_path / "errors.jsonl").startswith(
        "its processes exited without logging an error (killed from outside")


def test_rollout_failures_name_the_worker_and_whether_a_restart_helps():
    died = RolloutFailed("rollout worker", 1, EngineDied("vLLM engine died: RuntimeError: boom (x.py:1, in f)"))
    assert str(died) == "rollout worker 1: vLLM engine died: RuntimeError: boom (x.py:1, in f)"
    assert died.engine_died and died.index == 1
    gone = RolloutFailed("infer worker", 0, ray.exceptions.RayActorError())
    assert str(gone) == "infer worker 0: its Ray actor died (the process was killed or crashed)" and gone.engine_died
    bug = RolloutFailed("rollout worker", 0, ValueError("bad prompt"))
    assert str(bug) == "rollout worker 0: bad prompt" and not bug.engine_died


def test_cli_prints_a_run_error_as_one_block_exit_1(monkeypatch, capsys):
    from rayalign import cli

    def fail(**_):
        raise RunError("rollout worker 0: vLLM engine died: RuntimeError: boom\nstopped after step 3 of 5")

    monkeypatch.setattr(cli, "app", fail)
    with pytest.raises(SystemExit) as info:
        cli.main(["train"])
    assert info.value.code == 1
    assert capsys.readouterr().err == ("error: rollout worker 0: vLLM engine died: RuntimeError: boom\n"
                                       "stopped after step 3 of 5\n")
