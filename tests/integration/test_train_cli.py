"""`rayalign train` as a user runs it: the CLI on a tiny recipe, its own local Ray, then the final
directory loads in vLLM and scores like transformers."""

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from train_helpers import ours_traceback, recipe

EXE = str(Path(sys.executable).parent / "rayalign")
PROMPT = "<|im_start|>user\nHow many 'r' in 'strawberry'?<|im_end|>\n<|im_start|>assistant\n"


def test_cli_trains_and_final_loads_in_vllm(tiny_model_dir, task_files, tmp_path):
    from vllm import LLM, SamplingParams

    cfg = tmp_path / "sft.yaml"  # relative model and output paths, as recipes have: workers resolve them
    cfg.write_text(yaml.safe_dump(recipe(os.path.relpath(tiny_model_dir, tmp_path), "sft", task_files["sft"], "out",
                                         max_steps=3)))
    done = subprocess.run([EXE, "train", "-c", str(cfg), "--training.learning_rate", "2e-3"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    final = tmp_path / "out" / "final"
    assert done.stdout.strip().splitlines()[-1] == f"final model in {final}"
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["training"]["learning_rate"] == 2e-3

    again = subprocess.run([EXE, "train", "-c", str(cfg)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 2 and "already holds checkpoints of a run" in again.stderr

    tok = AutoTokenizer.from_pretrained(final)
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(final)(torch.tensor([ids])).logits[0]
    expected = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    llm = LLM(model=str(final), dtype="float32", gpu_memory_utilization=0.2, max_model_len=256,
              enforce_eager=True, seed=0)
    try:
        out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
        got = [next(iter(lp.values())).logprob for lp in out.prompt_logprobs[1:]]
        assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-3
    finally:
        del llm


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
