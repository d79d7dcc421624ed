"""Tokenising rows for training: chat templates, assistant-only loss masks, packing.

Assistant-only masks are found by rendering the chat template for each assistant turn's prefix (with
the generation prompt) and for the conversation up to that turn: the characters between the two are
the assistant's, and the tokens whose offsets fall there get labels. This works with any template,
without the ``{% generation %}`` markers few hub templates carry. Label -100 = ignored by the loss.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from transformers import PreTrainedTokenizerBase

from rayalign.errors import DataError

IGNORE = -100


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn in it."""
    full = _render(tokenizer, messages, False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:i], True))
        upto = _render(tokenizer, messages[: i + 1], False)
        end = len(upto.rstrip())  # the template's newline after the turn is not the model's to say
        if not full.startswith(upto):
            raise DataError("the tokenizer's chat template does not render conversations prefix-stably; "
                            "assistant-only masks need it (set a template via model.tokenizer)")
        spans.append((start, end))
    return full, spans


def tokenize_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict],
                          max_length: int) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (prompt tokens masked to -100), truncated to ``max_length``."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        tok if any(s <= start < e for s, e in spans) else IGNORE
        for tok, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"])
    ]
    return {"input_ids": enc["input_ids"][:max_length], "labels": labels[:max_length]}


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str) -> dict[str, list[int]]:
    """A pretraining document: all tokens are labels; EOS closes the document."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": list(ids)}


def pack(examples: Iterable[dict[str, list[int]]], max_length: int) -> Iterator[dict[str, list[int]]]:
    """Concatenate examples into full ``max_length`` blocks; ``position_ids`` restart per example.

    The tail that does not fill a last block is dropped (as HF's ``group_texts`` does); a block's first
    label is not masked, and documents may continue across blocks.
    """
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for ex in examples:
        ids += ex["input_ids"]
        labels += ex["labels"]
        positions += list(range(len(ex["input_ids"])))
        while len(ids) >= max_length:
            yield {"input_ids": ids[:max_length], "labels": labels[:max_length],
                   "position_ids": positions[:max_length]}
            ids, labels, positions = ids[max_length:], labels[max_length:], positions[max_length:]
