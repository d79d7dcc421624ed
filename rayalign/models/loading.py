"""Loading any HF causal LM and its tokenizer from a ``ModelConfig``; optional LoRA via peft. A reward model
(``head="score"``) is the same network with a one-label score head instead of the LM head
(``AutoModelForSequenceClassification``), loadable from a causal LM (the head then starts fresh) or a saved
reward model.

A load that fails says so in one line naming the config key: the damaged file when a local directory
has one (``models.checks``), else transformers' own first line. A tokenizer bigger than the model's
embedding and LoRA targets that name no layer are refused here too, before they fail deep in a step.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForSequenceClassification,
                          AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase)

from rayalign.config import ModelConfig
from rayalign.config_io import recipes_writing
from rayalign.errors import UserError
from rayalign.models import vlm
from rayalign.models.checks import check_lora_targets, check_vocab, damaged_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
HEADS = {"lm": AutoModelForCausalLM, "score": AutoModelForSequenceClassification, "vl": AutoModelForImageTextToText}


def head_of(trainer: str) -> str:
    """The model class a trainer trains: a score head for reward models, a vision-language model for vl_sft,
    the LM head for the rest."""
    return {"reward_model": "score", "vl_sft": "vl"}.get(trainer, "lm")


def _load_error(what: str, name: str, exc: Exception, key: str = "model.name_or_path") -> UserError:
    damaged = damaged_file(name)
    if damaged:
        return UserError(f"{key}: {damaged}")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"{key}: cannot load {what} '{name}': {first}")


def _looks_local(name: str) -> bool:
    """A path, not a hub id ("org/name"): absolute, ./ ../ ~, two slashes or more, or under a directory
    that exists here (``outputs/sft`` when ``outputs/`` does)."""
    return (Path(name).expanduser().is_absolute() or name.startswith((".", "~")) or name.count("/") >= 2
            or ("/" in name and Path(name.split("/")[0]).is_dir()))


def check_local(name: str) -> None:
    """A local model directory that does not exist is named as such, with the recipe that writes it
    (transformers would take it for a hub id and complain about its form)."""
    if not _looks_local(name) or Path(name).expanduser().exists():
        return
    makers = recipes_writing(name)
    hint = (f"it is written by {makers[0]}: run `rayalign train -c {makers[0]}` first" if makers else
            "a training run writes OUTPUT_DIR/final when it finishes; check the path")
    raise UserError(f"model.name_or_path: the local directory '{name}' does not exist; {hint}")


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    name = cfg.tokenizer or cfg.name_or_path
    check_local(name)
    try:
        tok = AutoTokenizer.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        key = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
        raise _load_error("tokenizer", name, exc, key) from None
    if tok.pad_token is None:  # batching needs one; the EOS token is the usual stand-in
        tok.pad_token = tok.eos_token
    check_vocab(tok, cfg)
    return tok


def load_model(cfg: ModelConfig, *, apply_lora: bool = True, head: str = "lm") -> PreTrainedModel:
    """The model with ``cfg.dtype`` and ``head`` (``HEADS``); wrapped in a peft LoRA model when ``cfg.lora`` is
    set (on a vision-language model: on its language model only). A score head reads each sequence's last token
    that is not the tokenizer's padding token."""
    from safetensors import SafetensorError

    check_local(cfg.name_or_path)
    extra = {"num_labels": 1} if head == "score" else {}
    try:
        model = HEADS[head].from_pretrained(
            cfg.name_or_path, revision=cfg.revision, dtype=DTYPES[cfg.dtype],
            trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation, **extra,
        )
    except ImportError as exc:  # the package behind a flash attention backend is not installed
        if not (cfg.attn_implementation or "").startswith("flash"):
            raise
        raise UserError(f"model.attn_implementation: {cfg.attn_implementation} cannot be used here "
                        f"({str(exc).strip().splitlines()[0]}); use sdpa or eager") from None
    except (OSError, ValueError, SafetensorError) as exc:
        raise _load_error("model", cfg.name_or_path, exc) from None
    if head == "score" and model.config.pad_token_id is None:  # the head finds each sequence's end by it
        model.config.pad_token_id = load_tokenizer(cfg).pad_token_id
    if cfg.freeze_vision:
        vlm.freeze_vision(model)
    if cfg.lora is not None and apply_lora:
        from peft import LoraConfig, get_peft_model

        check_lora_targets(model, cfg.lora.target_modules)
        targets = vlm.language_lora_targets(model, cfg.lora.target_modules) if head == "vl" else cfg.lora.target_modules
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=targets, task_type="SEQ_CLS" if head == "score" else "CAUSAL_LM",
        ))
    return model


def load_trainable(cfg: ModelConfig, saved: str | None = None, head: str = "lm") -> PreTrainedModel:
    """The model to train: from ``cfg``, or the weights saved in a checkpoint's model dir ``saved``.

    Full fine-tuning reloads ``saved`` as the model; LoRA loads the base from ``cfg`` and the saved
    adapter on top of it (trainable).
    """
    if saved is None:
        return load_model(cfg, head=head)
    if cfg.lora is None:
        return load_model(cfg.model_copy(update={"name_or_path": saved}), head=head)
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(cfg, apply_lora=False, head=head), saved, is_trainable=True)
