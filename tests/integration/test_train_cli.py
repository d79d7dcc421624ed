"""`rayalign train` as a user runs it, when it diverges: one line, no model shipped. (The run that
succeeds, is stopped, resumes and loads in vLLM: test_signals.py.)"""

import subprocess
import sys
from pathlib import Path

import yaml

from train_helpers import ours_traceback, recipe

EXE = str(Path(sys.executable).parent / "rayalign")


def test_a_diverged_run_stops_in_one_line_and_ships_no_model(tiny_model_dir, task_files, tmp_path):
    """Issue 20: a model gone NaN trained on and saved a NaN final model with exit 0."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if k.endswith("mlp.up_proj.weight"))
    weights[name][0, 0] = float("inf")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump(recipe(str(broken), "sft", task_files["sft"], str(tmp_path / "out"), max_steps=3)))
    done = subprocess.run([EXE, "train", "-c", str(cfg)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]  # the last line, never buried under a worker's bar or log
    assert not ours_traceback(done.stderr), done.stderr[-3000:]  # the worker's traceback stays in Ray's logs
    assert error.startswith("error: Ray Train worker rank 0: step 1: loss is nan, grad_norm is nan; stopped before "
                           "the optimizer update"), error
    assert error.endswith("; no checkpoint was written before it")
    assert not (tmp_path / "out" / "final").exists()
