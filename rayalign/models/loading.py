"""Loading any HF causal LM and its tokenizer from a ``ModelConfig``; optional LoRA via peft."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rayalign.config import ModelConfig
from rayalign.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def _load_error(what: str, name: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"model.name_or_path: cannot load {what} '{name}': {first}")


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    name = cfg.tokenizer or cfg.name_or_path
    try:
        tok = AutoTokenizer.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error("tokenizer", name, exc) from None
    if tok.pad_token is None:  # batching needs one; the EOS token is the usual stand-in
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, *, apply_lora: bool = True) -> PreTrainedModel:
    """The model with ``cfg.dtype``; wrapped in a peft LoRA model when ``cfg.lora`` is set."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.name_or_path, revision=cfg.revision, dtype=DTYPES[cfg.dtype],
            trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation,
        )
    except (OSError, ValueError) as exc:
        raise _load_error("model", cfg.name_or_path, exc) from None
    if cfg.lora is not None and apply_lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM",
        ))
    return model


def load_trainable(cfg: ModelConfig, saved: str | None = None) -> PreTrainedModel:
    """The model to train: from ``cfg``, or the weights saved in a checkpoint's model dir ``saved``.

    Full fine-tuning reloads ``saved`` as the model; LoRA loads the base from ``cfg`` and the saved
    adapter on top of it (trainable).
    """
    if saved is None:
        return load_model(cfg)
    if cfg.lora is None:
        return load_model(cfg.model_copy(update={"name_or_path": saved}))
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(cfg, apply_lora=False), saved, is_trainable=True)
