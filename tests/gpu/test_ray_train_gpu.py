"""CUDA path of the Ray Train trainers: one GPU worker (nccl), SFT loss goes down and the final model
loads. Skipped without CUDA."""

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))


def test_sft_on_one_gpu_worker(tiny_model_dir, tmp_path):
    import json

    import ray
    from transformers import AutoModelForCausalLM

    from rayalign.data.tasks import generate, to_row
    from rayalign.metrics import read_metrics
    from rayalign.recipes.ray_train import run
    from train_helpers import build, recipe

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(to_row(e, "sft")) + "\n" for e in generate("letter_count", 64, 1)))
    if not ray.is_initialized():
        ray.init(num_gpus=1)
    cfg = build(recipe(tiny_model_dir, "sft", str(data), tmp_path / "out", max_steps=6),
                scaling={"num_workers": 1, "use_gpu": True})
    final = run(cfg)
    rows = read_metrics(tmp_path / "out")
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size > 0
