"""Log-likelihood evaluations on an HF model: multiple choice and perplexity (pure torch, no Ray).

Multiple choice, as lm-evaluation-harness scores it: each choice is a continuation of the question
(rendered through the chat template as a user turn, the choice as the start of the assistant's answer);
``accuracy`` picks the choice with the highest summed log-prob, ``accuracy_norm`` the highest log-prob per
character of the choice (so long choices are not penalised for their length).

Perplexity: the text (a plain file, or a JSONL of ``text`` rows joined by newlines) is tokenised once and cut
into windows of ``window`` tokens without overlap; every
token but the first of each window is scored. exp(mean negative log-prob) over all scored tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rayalign.data.collate import pad_pairs, tokenize_prompt
from rayalign.data.sources import iter_dicts
from rayalign.errors import DataError
from rayalign.models.logprobs import sequence_logps

BUILTIN_MC = Path(__file__).with_name("mc_builtin.jsonl")


def read_mc(path: Path, limit: int) -> list[dict]:
    """Rows ``{"question": str, "choices": [str, ...], "answer": index}``; errors name file:line."""
    rows = []
    for where, row in iter_dicts(str(path)):
        choices, answer = row.get("choices"), row.get("answer")
        if not isinstance(row.get("question"), str):
            raise DataError(f"{where}: field 'question' must be a string")
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
            raise DataError(f"{where}: field 'choices' must be a list of at least 2 strings")
        if not (isinstance(answer, int) and 0 <= answer < len(choices)):
            raise DataError(f"{where}: field 'answer' must be the index of the right choice "
                            f"(0..{len(choices) - 1})")
        rows.append(row)
        if len(rows) == limit:
            break
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def read_text(path: Path) -> str:
    if path.suffix == ".jsonl":
        texts = []
        for where, row in iter_dicts(str(path)):
            if not isinstance(row.get("text"), str):
                raise DataError(f"{where}: field 'text' must be a string")
            texts.append(row["text"])
        return "\n".join(texts)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path.read_text()


@torch.no_grad()
def _score(model: PreTrainedModel, pairs: list[tuple[list[int], list[int]]], pad_id: int,
           batch_size: int) -> list[float]:
    """Summed log p(continuation | context) for each (context ids, continuation ids) pair."""
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(pairs), batch_size):
        ids, mask, labels = pad_pairs(pairs[i:i + batch_size], pad_id)
        total, _ = sequence_logps(model, ids.to(device), mask.to(device), labels.to(device))
        out += total.tolist()
    return out


def multiple_choice(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict],
                    batch_size: int) -> dict[str, float]:
    pairs = []
    for row in rows:
        context = tokenize_prompt(tokenizer, [{"role": "user", "content": row["question"]}], None)
        pairs += [(context, tokenizer(choice, add_special_tokens=False)["input_ids"]) for choice in row["choices"]]
    scores = _score(model, pairs, tokenizer.pad_token_id, batch_size)
    right = right_norm = 0
    start = 0
    for row in rows:
        k = len(row["choices"])
        mine = scores[start:start + k]
        per_char = [s / max(1, len(c)) for s, c in zip(mine, row["choices"])]
        right += max(range(k), key=mine.__getitem__) == row["answer"]
        right_norm += max(range(k), key=per_char.__getitem__) == row["answer"]
        start += k
    return {"accuracy": right / len(rows), "accuracy_norm": right_norm / len(rows), "n": len(rows)}


def perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path, window: int,
               batch_size: int, limit_windows: int) -> dict[str, float]:
    ids = tokenizer(read_text(path), add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise DataError(f"{path}: fewer than 2 tokens of text")
    windows = [ids[i:i + window] for i in range(0, len(ids), window)][:limit_windows]
    pairs = [(w[:1], w[1:]) for w in windows if len(w) > 1]  # each window's first token is context only
    total = sum(_score(model, pairs, tokenizer.pad_token_id, batch_size))
    scored = sum(len(c) for _, c in pairs)
    return {"perplexity": math.exp(-total / scored), "tokens": scored}
