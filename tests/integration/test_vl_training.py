"""Issue 17: vision-language training on the tiny LLaVA. VL-SFT on 2 Ray Train workers (FSDP2 over the CLIP tower's
and the decoder's layers) learns the built-in ``shape_colour`` task: held-out accuracy by the task's checker beats
the best constant answer, and the final directory loads as a VLM with its processor. Then GRPO on ``vl_prompt``
rows from that model through every role (HF rollout engine, 2 FSDP2 learners, the reference actor, a reward
worker), each role reading the prompts' images, with the weight sync's fingerprint checked at every sync."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from rayalign.config import EvalTaskConfig, ModelConfig, RecipeConfig
from rayalign.data.visual_tasks import generate_visual, write_rows
from rayalign.metrics import read_metrics

TASK = "shape_colour"


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from rayalign.models.tiny_vlm import create_tiny_vlm

    return create_tiny_vlm(tmp_path_factory.mktemp("vlm") / "llava")


def vl_sft_recipe(model, root, steps: int) -> RecipeConfig:
    write_rows(generate_visual(TASK, 16 * steps, seed=0), "vl_sft", root / "train.jsonl")
    write_rows(generate_visual(TASK, 16, seed=1), "vl_sft", root / "eval.jsonl")
    split = {"format": "vl_sft", "max_length": 96}
    return RecipeConfig.model_validate({
        "trainer": "vl_sft",
        "model": {"name_or_path": str(model)},
        "data": {"train": {**split, "datasets": [{"path": str(root / "train.jsonl")}]},
                 "eval": {**split, "datasets": [{"path": str(root / "eval.jsonl")}], "shuffle": False}},
        "training": {"output_dir": str(root / "out"), "learning_rate": 2e-3, "lr_scheduler": "cosine",
                     "warmup_steps": 10, "micro_batch_size": 8, "max_steps": steps, "eval_steps": steps,
                     "save_steps": steps, "logging_steps": 10},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "torch_threads": 1, "strategy": "fsdp"},
    })


@pytest.fixture(scope="module")
def vl_sft_final(ray_local, tiny_vlm, tmp_path_factory):
    from rayalign.recipes.ray_train import run

    cfg = vl_sft_recipe(tiny_vlm, tmp_path_factory.mktemp("vl_sft"), steps=240)
    return cfg, run(cfg)


def test_vl_sft_on_two_workers_learns_the_visual_task_beyond_the_best_constant(vl_sft_final):
    from rayalign.engines.hf_engine import HFEngine
    from rayalign.evaluate.generative import verifiable

    cfg, final = vl_sft_final
    metrics = read_metrics(cfg.training.output_dir)
    assert metrics[-1]["step"] == 240 and metrics[-1]["loss"] < 0.5 * metrics[0]["loss"]
    assert metrics[-1]["eval_loss"] < 0.4  # per assistant token, on rows it never trained on
    processor = AutoProcessor.from_pretrained(final)  # the processor is saved with the model
    model = AutoModelForImageTextToText.from_pretrained(final)
    assert processor.image_token_id == model.config.image_token_index
    engine = HFEngine(ModelConfig(name_or_path=str(final)))
    result = verifiable(engine, engine.processor, EvalTaskConfig(name=TASK, kind="generate", task=TASK,
                                                                  num_samples=120, max_new_tokens=16), 0.0)
    print(f"{TASK} after VL-SFT: {result}")
    assert result["format_rate"] > 0.95
    assert result["accuracy"] >= result["best_constant"] + 0.15, result


def test_grpo_on_the_vlm_through_every_role_reads_the_images_and_syncs(vl_sft_final, tmp_path):
    from rayalign.recipes.grpo import run

    _, final = vl_sft_final
    write_rows(generate_visual(TASK, 16, seed=3), "vl_prompt", tmp_path / "prompts.jsonl")
    cfg = RecipeConfig.model_validate({
        "trainer": "grpo",
        "model": {"name_or_path": str(final)},
        "data": {"train": {"format": "vl_prompt", "datasets": [{"path": str(tmp_path / "prompts.jsonl")}],
                           "max_length": 96}},
        "training": {"output_dir": str(tmp_path / "out"), "learning_rate": 1e-3, "lr_scheduler": "constant",
                     "max_steps": 2, "micro_batch_size": 8, "seed": 7},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5, "torch_threads": 1},
        "algorithm": {"name": "grpo", "prompts_per_step": 4, "group_size": 4, "kl_coef": 0.05},
        "rollout": {"engine": "hf", "num_cpus": 0.5, "max_new_tokens": 16, "temperature": 1.0},
        "reward": {"functions": [{"name": "boxed_answer"}], "num_cpus": 0.25},
        "reference": {"num_cpus": 0.25},
    })
    out = run(cfg)
    metrics = read_metrics(tmp_path / "out")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        # the rollout engine saw the images: the SFT'd model answers in format and mostly right, which it
        # cannot do blind (a constant answer scores about a quarter)
        assert m["reward/boxed_answer"] == m["accuracy"] and m["accuracy"] > 0.3, m
        # the learners recompute the engine's log-probs with the images: a blind forward would be far off
        assert m["mismatch_kl"] < 1e-3, m
        assert 0 < m["kl"] < 0.1 and m["time_sync_s"] > 0, m  # the reference scored the same images
    tuned = AutoModelForImageTextToText.from_pretrained(out)
    before = AutoModelForImageTextToText.from_pretrained(final)
    moved = {name for name, p in tuned.named_parameters()
             if not torch.equal(p, dict(before.named_parameters())[name])}
    assert any("language_model" in n for n in moved) and any("vision_tower" in n for n in moved)
