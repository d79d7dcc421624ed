"""What can be checked about a model without loading its weights, each failure one line naming the config
key and the file: a damaged file in a local model directory, a tokenizer with more tokens than the model
has embedding rows, LoRA target modules that name no layer.

``check_model`` runs the checks the driver can afford before any worker starts (a LoRA check builds the
model on the meta device: no memory, no weights); ``models.loading`` runs them too, to explain its own
failures wherever a model is loaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from rayalign.config import ModelConfig
from rayalign.errors import UserError

ADAPTABLE = (torch.nn.Linear, torch.nn.Embedding, Conv1D)  # the layers peft's LoRA wraps in causal LMs


def damaged_file(directory: str) -> str | None:
    """"FILE is damaged or truncated (why)" for the first JSON or safetensors file of a local model
    directory that does not parse (a safetensors file: its header and its length); None when all do."""
    from safetensors import SafetensorError, safe_open

    root = Path(directory).expanduser()
    if not root.is_dir():
        return None
    for path in sorted(root.glob("*.json")):
        try:
            json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"{path} is damaged or truncated ({exc})"
    for path in sorted(root.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            return f"{path} is damaged or truncated ({exc})"
    return None


def model_config(cfg: ModelConfig):
    """The model's ``config.json`` as a transformers config."""
    try:
        return AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                          trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        damaged = damaged_file(cfg.name_or_path)
        raise UserError(f"model.name_or_path: {damaged}" if damaged else
                        f"model.name_or_path: cannot load the config of '{cfg.name_or_path}': "
                        f"{str(exc).strip().splitlines()[0]}") from None


def check_vocab(tokenizer: PreTrainedTokenizerBase, cfg: ModelConfig) -> None:
    """Every token id must have an embedding row: a bigger tokenizer would fail deep in a forward pass."""
    rows = getattr(model_config(cfg).get_text_config(), "vocab_size", None)
    tokens = max(tokenizer.get_vocab().values()) + 1
    if rows is not None and tokens > rows:
        key = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
        raise UserError(f"{key}: the tokenizer '{cfg.tokenizer or cfg.name_or_path}' has {tokens} tokens but the "
                        f"model '{cfg.name_or_path}' has {rows} embedding rows (vocab_size); ids from {rows} up "
                        "would index past them: use the model's own tokenizer")


def _matches(name: str, target: str, regex: bool) -> bool:
    """peft's rule: a regex (target_modules given as one string) must match the whole module name, a list
    entry the name or its dotted suffix."""
    return re.fullmatch(target, name) is not None if regex else name == target or name.endswith(f".{target}")


def check_lora_targets(model: torch.nn.Module, targets: list[str] | str) -> None:
    """Every entry of ``model.lora.target_modules`` must name a layer LoRA can adapt ("all-linear": any)."""
    if targets == "all-linear":
        return
    layers = [name for name, module in model.named_modules() if isinstance(module, ADAPTABLE)]
    regex = isinstance(targets, str)
    try:
        bad = [t for t in ([targets] if regex else targets) if not any(_matches(n, t, regex) for n in layers)]
    except re.error as exc:
        raise UserError(f"model.lora.target_modules: '{targets}' is not a valid regular expression ({exc})") from None
    if bad:
        leaves = ", ".join(dict.fromkeys(name.rsplit(".", 1)[-1] for name in layers))
        raise UserError(f"model.lora.target_modules: {', '.join(bad)} {'matches' if len(bad) == 1 else 'match'} "
                        f"no Linear or Embedding layer of the model; its layers are named {leaves} "
                        "(or use all-linear)")


def check_model(cfg: ModelConfig) -> None:
    """The checks worth doing on the driver before workers load the weights: the local model directory's
    files parse, and LoRA's target modules exist (on a meta-device copy of the model)."""
    damaged = damaged_file(cfg.name_or_path)
    if damaged:
        raise UserError(f"model.name_or_path: {damaged}")
    if cfg.lora is not None and cfg.lora.target_modules != "all-linear":
        with torch.device("meta"):
            config = model_config(cfg)
            kind = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
            skeleton = kind.from_config(config, trust_remote_code=cfg.trust_remote_code)
        check_lora_targets(skeleton, cfg.lora.target_modules)


def check_score_model(path: str, where: str, policy: ModelConfig | None = None) -> None:
    """A model to score with (a reward model): a one-label sequence classifier, else one line naming ``where``
    (a causal LM would load with a fresh random head and score noise, silently). With ``policy`` (a critic
    reads the policy's token ids) its vocabulary must be the policy's."""
    from rayalign.models.loading import check_local

    try:
        check_local(path)
        config = model_config(ModelConfig(name_or_path=path))
    except UserError as exc:
        raise UserError(str(exc).replace("model.name_or_path", where, 1)) from None
    kinds = config.architectures or []
    if not any(kind.endswith("ForSequenceClassification") for kind in kinds) or config.num_labels != 1:
        raise UserError(f"{where}: '{path}' is not a one-label sequence classifier (architectures {kinds}, "
                        f"num_labels {config.num_labels}); train one with trainer: reward_model")
    if policy is not None and config.vocab_size != (theirs := model_config(policy).vocab_size):
        raise UserError(f"{where}: '{path}' has a vocabulary of {config.vocab_size} tokens, the policy {theirs}; "
                        "the critic reads the policy's tokens: start it from a reward model on the policy's "
                        "tokenizer, or leave it null")
