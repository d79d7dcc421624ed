"""The parts of a vision-language model (``AutoModelForImageTextToText``) that training treats apart: its vision
tower, frozen by ``model.freeze_vision``, and its language model, the only part LoRA adapts (as TRL's and Oumi's
VLM recipes do: the image features stay what the tower was trained to give). Its processor (image processor +
tokenizer + chat template) loads with ``load_processor``.

The parts are found by the attribute names transformers' VLMs use (``vision_tower`` for LLaVA and its kin,
``visual`` for Qwen2-VL, ``vision_model`` for Idefics3/SmolVLM and Mllama; ``language_model``, or ``text_model``
for Idefics3/SmolVLM).
"""

from __future__ import annotations

import re

import torch

from rayalign.config import ModelConfig
from rayalign.errors import UserError

VISION_PARTS = ("vision_tower", "visual", "vision_model")
LANGUAGE_PARTS = ("language_model", "text_model")


def is_vlm(cfg: ModelConfig) -> bool:
    """Whether the configured model is a vision-language model (its config has a vision part)."""
    from rayalign.models.checks import model_config

    return hasattr(model_config(cfg), "vision_config")


def vision_part(model: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    """(qualified name, module) of the vision tower; None for a text-only model."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in VISION_PARTS:
            return name, module
    return None


def freeze_vision(model: torch.nn.Module) -> int:
    """Stop the vision tower's weights from training; returns how many parameters it holds."""
    found = vision_part(model)
    if found is None:
        raise UserError("model.freeze_vision: the model has no vision tower (a text-only model?); "
                        f"looked for a module named {' / '.join(VISION_PARTS)}")
    found[1].requires_grad_(False)
    return sum(p.numel() for p in found[1].parameters())


def language_lora_targets(model: torch.nn.Module, targets: list[str] | str) -> str:
    """peft ``target_modules`` as one regex matching only the language model's layers: ``all-linear`` becomes its
    Linear layers (the LM head left out, as peft does), a list of names those names inside it."""
    if targets == "all-linear":
        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and any(f"{part}." in n for part in LANGUAGE_PARTS)}
    elif isinstance(targets, str):
        return targets  # a regex is the user's own choice of layers
    else:
        names = set(targets)
    return rf".*\b({'|'.join(LANGUAGE_PARTS)})\..*\.({'|'.join(sorted(map(re.escape, names)))})"


def load_processor(cfg: ModelConfig):
    """The model's processor (``AutoProcessor``): what turns images and text into the model's inputs."""
    from transformers import AutoProcessor

    from rayalign.models.loading import _load_error, check_local

    name = cfg.tokenizer or cfg.name_or_path
    check_local(name)
    try:
        processor = AutoProcessor.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error("processor", name, exc, "model.tokenizer" if cfg.tokenizer else "model.name_or_path") from None
    if not hasattr(processor, "image_processor"):
        raise UserError(f"model.name_or_path: '{name}' has no image processor (processor {type(processor).__name__}); "
                        "trainer vl_sft and vl_prompt data need a vision-language model")
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor
