"""Tokenising rows for training: chat templates, assistant-only loss masks, packing.

Assistant-only masks are found by rendering the chat template for each assistant turn's prefix (with
the generation prompt) and for the conversation up to that turn: the characters between the two are
the assistant's, and the tokens whose offsets fall there get labels. This works with any template,
without the ``{% generation %}`` markers few hub templates carry. Label -100 = ignored by the loss.

Bounded work on hostile rows: a token stands for at most ``max_token_chars`` characters (the longest
token string in the vocabulary), so text past ``char_budget`` characters lies beyond ``max_length``
tokens. Contents and rendered text are cut there *before* templating and tokenising (one 50 MB row
costs a few MB, not gigabytes); the budget is twice what ``max_length`` tokens can cover, so the kept
tokens never touch the cut. Rows longer than ``max_length`` are truncated as before; ``Overlong``
counts them (and the rows truncation leaves nothing to learn from) for a one-line note per split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Iterator

from transformers import PreTrainedTokenizerBase

from rayalign.errors import DataError

IGNORE = -100


@lru_cache(maxsize=8)
def max_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most characters one token can stand for (a byte-level token's string has a character per byte,
    so this over-counts, never under)."""
    return max(map(len, tokenizer.get_vocab()))


def char_budget(tokenizer: PreTrainedTokenizerBase, max_length: int) -> int:
    """Characters that certainly hold more than ``2 * max_length`` tokens."""
    return 2 * max_length * max_token_chars(tokenizer)


def clip_messages(messages: list[dict], budget: int, keep: str = "head") -> list[dict]:
    """The part of a conversation a window of ``budget`` characters at its head (or tail) can show: each
    content cut to ``budget`` characters, and the messages past ``budget`` characters of content left out."""
    order = messages if keep == "head" else messages[::-1]
    out, seen = [], 0
    for msg in order:
        if seen >= budget:
            break
        content = msg.get("content")
        size = len(content) if isinstance(content, str) else 0
        if size > budget:
            msg = {**msg, "content": content[:budget] if keep == "head" else content[-budget:]}
        out.append(msg)
        seen += size + 1  # +1: an empty message still renders (a million of them are hostile too)
    return out if keep == "head" else out[::-1]


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
                          max_length: int) -> dict[str, list[int] | bool]:
    """``input_ids`` and ``labels`` (prompt tokens masked to -100), truncated to ``max_length``;
    ``truncated`` says whether the conversation was longer."""
    budget = char_budget(tokenizer, max_length)
    text, spans = assistant_spans(tokenizer, clip_messages(messages, budget))
    enc = tokenizer(text[:budget], add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][:max_length]
    labels = [tok if any(s <= start < e for s, e in spans) else IGNORE
              for tok, (start, _end) in zip(ids, enc["offset_mapping"])]
    return {"input_ids": ids, "labels": labels, "truncated": len(enc["input_ids"]) > max_length}


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str,
                  max_length: int | None = None) -> dict[str, list[int] | bool]:
    """A pretraining document: all tokens are labels; EOS closes the document. ``max_length``: keep the
    first ``max_length`` tokens (``truncated`` says whether there were more); None: all of them."""
    if max_length is not None:
        text = text[:char_budget(tokenizer, max_length)]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    cut = ids if max_length is None else ids[:max_length]
    return {"input_ids": cut, "labels": list(cut), "truncated": len(cut) < len(ids)}


@dataclass
class Overlong:
    """Rows of one split that did not fit ``limit``, counted while tokenising: each outcome ("were
    truncated to it") becomes one note naming how many and where the first one is."""

    split: str  # "data.train"
    limit: str  # "max_length 64 tokens"
    rows: int = 0
    outcomes: dict[str, list[int]] = field(default_factory=dict)  # outcome -> [count, first row index]

    def add(self, index: int, outcome: str | None) -> None:
        self.rows += 1
        if outcome:
            self.outcomes.setdefault(outcome, [0, index])[0] += 1

    def count(self, outcome: str) -> int:
        return self.outcomes.get(outcome, [0])[0]

    def notes(self, where: Callable[[int], str], unit: str = "rows") -> list[str]:
        """One line per outcome; ``where(i)`` names row i (``data.loading.row_location``)."""
        return [f"{self.split}: {n} of {self.rows} {unit} are longer than {self.limit} and {outcome} "
                f"(first: {where(first)})" for outcome, (n, first) in self.outcomes.items()]


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
