"""A reward model on Ray Train (2 FSDP2 workers): Bradley-Terry on preference pairs, a one-label score head on
the tiny causal LM, and an output directory that loads as an ``AutoModelForSequenceClassification``."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rayalign.config import PreferenceConfig
from rayalign.data.collate import collate_reward, tokenize_preference
from rayalign.data.sources import iter_dicts
from rayalign.metrics import read_metrics
from rayalign.recipes.ray_train import run
from rayalign.training.objectives import RewardModelObjective
from train_helpers import build, recipe


def test_reward_model_trains_and_its_final_dir_scores_as_logged(ray_local, tiny_model_dir, task_files, tiny_tokenizer,
                                                                 tmp_path):
    d = recipe(tiny_model_dir, "reward_model", task_files["preference"], tmp_path / "rm",
               eval_file=task_files["preference_eval"], max_steps=18, learning_rate=1e-2, lr_scheduler="constant",
               warmup_steps=0, eval_steps=9)
    final = run(build(d, preference={"center_rewards_coefficient": 0.01}))
    rows = read_metrics(tmp_path / "rm")
    assert [r["step"] for r in rows] == list(range(1, 19))
    assert {"loss", "accuracy", "rewards/chosen", "rewards/rejected", "rewards/margins", "eval_loss",
            "eval_accuracy"} <= set(rows[-1])
    # 6 steps an epoch: the mean loss of epoch 3 against epoch 1, over the same pairs
    first, last = sum(r["loss"] for r in rows[:6]) / 6, sum(r["loss"] for r in rows[-6:]) / 6
    assert last < first, [r["loss"] for r in rows]

    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    assert model.config.num_labels == 1 and model.config.pad_token_id == tiny_tokenizer.pad_token_id
    pairs = [tokenize_preference(tiny_tokenizer, row, 96) for _, row in iter_dicts(task_files["preference_eval"])]
    objective = RewardModelObjective(PreferenceConfig(center_rewards_coefficient=0.01))
    with torch.no_grad():  # the 8 held-out pairs, as the workers' last evaluation scored them (4 per worker)
        halves = [objective.loss(model, collate_reward(pairs[i:i + 4], tiny_tokenizer.pad_token_id)) for i in (0, 4)]
    assert sum(loss.item() for loss, _ in halves) / 8 == pytest.approx(rows[-1]["eval_loss"], abs=1e-4)
    assert sum(m["accuracy"] for _, m in halves) / 2 == pytest.approx(rows[-1]["eval_accuracy"], abs=1e-6)


def test_lora_reward_model_trains_the_head_and_saves_a_merged_classifier(ray_local, tiny_model_dir, task_files,
                                                                         tiny_tokenizer, tmp_path):
    """LoRA on a score head: peft's sequence-classification task trains the fresh head in full beside the adapter;
    ``model/merged`` is a plain classifier whose scores are the trained (adapter + head) model's."""
    from peft import PeftModel

    from rayalign.config import ModelConfig
    from rayalign.models.loading import load_model

    d = recipe(tiny_model_dir, "reward_model", task_files["preference"], tmp_path / "lora", max_steps=2,
               learning_rate=1e-2, lr_scheduler="constant", warmup_steps=0)
    d["model"]["lora"] = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    final = run(build(d))
    merged = AutoModelForSequenceClassification.from_pretrained(final / "merged").eval()
    base = load_model(ModelConfig(name_or_path=str(tiny_model_dir)), apply_lora=False, head="score")
    trained = PeftModel.from_pretrained(base, final).eval()
    batch = collate_reward([tokenize_preference(tiny_tokenizer, row, 96)
                            for _, row in iter_dicts(task_files["preference_eval"])], tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        ours = merged(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        theirs = trained(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert ours.std() > 1e-4  # the head scores sequences differently
