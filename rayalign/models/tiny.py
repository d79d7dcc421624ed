"""Tiny-model factory: a real HF model directory made locally, for tests, examples and quickstart.

No machine here can download weights, so ``create_tiny`` trains a byte-level BPE tokenizer (the
``tokenizers`` library) on the built-in task text, adds ChatML special tokens and a chat template, and
writes a randomly initialised Qwen2 or Llama model with ``save_pretrained`` (config.json,
model.safetensors, tokenizer files). It loads with ``from_pretrained`` and in vLLM: head_dim stays 64,
the size vLLM's CPU attention kernels accept.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM, GenerationConfig, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config,
)

from rayalign.data.tasks import TASKS, WORDS, generate
from rayalign.errors import UserError

HEAD_DIM = 64
ARCHS = ("qwen2", "llama")
PAD, BOS, IM_START, IM_END = "<|endoftext|>", "<|startoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, IM_START, IM_END]
# ChatML, as Qwen2 uses: the assistant turn ends with <|im_end|>, which is also the stop token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def task_corpus(n_per_task: int = 2000, seed: int = 0) -> list[str]:
    """Text the tokenizer is trained on: chat-formatted task examples plus the word list."""
    texts = [" ".join(WORDS)]
    for task in TASKS:
        for ex in generate(task, n_per_task, seed):
            texts.append(f"{IM_START}user\n{ex.prompt}{IM_END}\n{IM_START}assistant\n{ex.solution}{IM_END}\n")
    return texts


def train_tokenizer(vocab_size: int, extra_texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the text tasks (and ``extra_texts``: the visual tasks' for a tiny VLM)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(task_corpus() + (extra_texts or []), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=PAD,
        chat_template=CHAT_TEMPLATE, model_max_length=2048,
    )


def check_sizes(arch: str, hidden: int, vocab: int) -> None:
    if hidden % HEAD_DIM:
        raise UserError(f"--hidden must be a multiple of {HEAD_DIM} (head_dim), got {hidden}")
    if vocab < 300:
        raise UserError(f"--vocab must be at least 300 (256 bytes + special tokens), got {vocab}")
    if arch not in ARCHS:
        raise UserError(f"--arch must be qwen2 or llama, got '{arch}'")


def create_tiny(out: str | Path, arch: str = "qwen2", layers: int = 2, hidden: int = 128,
                vocab: int = 1024, max_positions: int = 1024, seed: int = 0) -> Path:
    """Write a tiny random ``arch`` model with a task-trained tokenizer to ``out``; returns the path."""
    check_sizes(arch, hidden, vocab)
    tokenizer = train_tokenizer(vocab)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4,
        num_hidden_layers=layers, num_attention_heads=hidden // HEAD_DIM,
        num_key_value_heads=hidden // HEAD_DIM, max_position_embeddings=max_positions,
        tie_word_embeddings=True, bos_token_id=ids[BOS], eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD], dtype="float32",
    )
    config = Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(head_dim=HEAD_DIM, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=[ids[IM_END], ids[PAD]], pad_token_id=ids[PAD],
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
