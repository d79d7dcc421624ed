"""training.mixed_precision: the forward under bf16 autocast, weights and gradients kept in float32."""

import torch
from transformers import AutoModelForCausalLM

from rayalign.config import ModelConfig, ScalingConfig, TrainingConfig
from rayalign.models.logprobs import next_token_logps
from rayalign.training import precision
from rayalign.training.loop import build_trainable


def test_bf16_autocasts_the_forward_and_keeps_float32_weights_and_gradients(tiny_model_dir):
    ids = torch.randint(5, 900, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    mixed = precision.apply(AutoModelForCausalLM.from_pretrained(tiny_model_dir), "bf16", torch.device("cpu"))
    assert precision.apply(full, "no", torch.device("cpu")).forward.__func__ is type(full).forward

    assert full(input_ids=ids).logits.dtype == torch.float32
    assert mixed(input_ids=ids).logits.dtype == torch.bfloat16  # the matmuls ran in bf16
    reference, _ = next_token_logps(full, ids, mask)
    logp, _ = next_token_logps(mixed, ids, mask)
    assert logp.dtype == torch.float32
    diff = (logp - reference).abs().max()
    assert 1e-5 < diff < 0.1, diff  # bf16 rounding (8 mantissa bits) of the same model, not another model

    (-logp.mean()).backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in mixed.parameters())


def test_build_trainable_applies_the_training_setting(tiny_model_dir):
    training = TrainingConfig(mixed_precision="bf16", max_steps=1)
    strategy, _ = build_trainable(ModelConfig(name_or_path=str(tiny_model_dir)), training, ScalingConfig(), 1,
                                  None, torch.device("cpu"))
    model = strategy.model
    ids = torch.randint(5, 900, (1, 8), generator=torch.Generator().manual_seed(1))
    assert model(input_ids=ids).logits.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.float32}
