"""CUDA path of the Ray Train trainers on one GPU worker (nccl): SFT loss goes down and the final model
loads; DPO's reference pass runs as a Ray Data GPU actor, frees the GPU for the trainer, and agrees with
the policy (loss log 2 at step 1). Skipped without CUDA."""

import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))

GPU = {"num_workers": 1, "use_gpu": True, "cpus_per_worker": 1, "torch_threads": 2}


def _data(tmp_path, fmt: str, n: int, seed: int) -> str:
    from rayalign.data.tasks import generate, to_row

    path = tmp_path / f"{fmt}.jsonl"
    path.write_text("".join(json.dumps(to_row(e, fmt, i)) + "\n" for i, e in enumerate(generate("letter_count", n, seed))))
    return str(path)


def _finite(rows: list[dict]) -> bool:
    return all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))


def test_sft_on_one_gpu_worker(ray_gpu, tiny_model_dir, tmp_path, report):
    from transformers import AutoModelForCausalLM

    from rayalign.metrics import read_metrics
    from rayalign.recipes.ray_train import run
    from train_helpers import build, recipe

    cfg = build(recipe(tiny_model_dir, "sft", _data(tmp_path, "sft", 128, 1), tmp_path / "out", max_steps=12,
                       micro_batch_size=8), scaling=GPU)
    final = run(cfg)
    rows = read_metrics(tmp_path / "out")
    assert [r["step"] for r in rows] == list(range(1, 13)) and _finite(rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size > 0
    report(first_loss=rows[0]["loss"], last_loss=rows[-1]["loss"],
           median_tokens_per_s_steps_4_12=statistics.median(r["tokens_per_s"] for r in rows[3:]),
           median_step_s=statistics.median(r["step_time_s"] for r in rows[3:]))


def test_dpo_with_gpu_reference_pass(ray_gpu, tiny_model_dir, tmp_path, report):
    from rayalign.metrics import read_metrics
    from rayalign.recipes.ray_train import run
    from train_helpers import build, recipe

    cfg = build(recipe(tiny_model_dir, "dpo", _data(tmp_path, "preference", 32, 4), tmp_path / "out", max_steps=4),
                scaling=GPU)
    final = run(cfg)
    rows = read_metrics(tmp_path / "out")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and _finite(rows)
    # the reference (Ray Data actor on the GPU) and the policy are the same model at step 1
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert (final / "model.safetensors").is_file()
    report(step1_loss=rows[0]["loss"], last_loss=rows[-1]["loss"])


def test_sft_on_deepspeed_zero3_on_one_gpu_worker(ray_gpu, tiny_model_dir, tmp_path, report):
    """DeepSpeed's CUDA accelerator (nccl, its fused Adam off: torch_adam) on one GPU: ZeRO-3 trains, the
    gathered parameters save as an HF directory, DeepSpeed's state sits beside them."""
    from transformers import AutoModelForCausalLM

    from rayalign.checkpoint import checkpoints
    from rayalign.metrics import read_metrics
    from rayalign.recipes.ray_train import run
    from train_helpers import build, recipe

    out = tmp_path / "out"
    cfg = build(recipe(tiny_model_dir, "sft", _data(tmp_path, "sft", 128, 1), out, max_steps=12, micro_batch_size=8),
                scaling={**GPU, "strategy": "deepspeed", "deepspeed": {"zero_stage": 3}})
    final = run(cfg)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 13)) and _finite(rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(p.numel() > 0 for p in AutoModelForCausalLM.from_pretrained(final).parameters())
    assert (checkpoints(out)[-1] / "deepspeed" / "state").is_dir()
    report(first_loss=rows[0]["loss"], last_loss=rows[-1]["loss"],
           median_tokens_per_s_steps_4_12=statistics.median(r["tokens_per_s"] for r in rows[3:]))
