"""Rows -> token lists (preference and KTO) and token lists -> padded typed batches.

A completion is tokenised apart from its prompt (as TRL does), so the prompt/completion boundary
never merges into one BPE token. Conversational rows render through the chat template: the prompt
with the generation prompt, the completion as the rest of the rendered conversation up to the end of
the turn (its end-of-turn token included, the template's trailing newline not). Flat-string rows are
used as they are, with EOS appended to the completion. Prompts keep their end and completions their
start; text beyond ``char_budget`` on the cut side is dropped before templating (``data.tokenize``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from rayalign.batch import KTOBatch, PreferenceBatch, RewardBatch, RolloutBatch, SFTBatch
from rayalign.data.tokenize import IGNORE, _render, char_budget, clip_messages
from rayalign.errors import DataError

Tokens = dict[str, Any]


def _clip(value: Any, budget: int | None, keep: str) -> Any:
    """A string or message list cut to what ``budget`` characters at its head or tail can show."""
    if budget is None:
        return value
    if isinstance(value, str):
        return value[:budget] if keep == "head" else value[-budget:]
    return clip_messages(value, budget, keep)


def split_prompt_completion(tokenizer: PreTrainedTokenizerBase, prompt: Any, completion: Any,
                            budget: int | None = None) -> tuple[str, str]:
    """(prompt text, completion text) for a string pair or a message-list pair; with ``budget``, only
    the prompt's last and the completion's first ``budget`` characters."""
    prompt, completion = _clip(prompt, budget, "tail"), _clip(completion, budget, "head")
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt, completion + (tokenizer.eos_token or "")
    prompt_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    completion_msgs = ([{"role": "assistant", "content": completion}] if isinstance(completion, str)
                       else completion)
    head = _render(tokenizer, prompt_msgs, True)
    full = _render(tokenizer, prompt_msgs + completion_msgs, False)
    if not full.startswith(head):
        raise DataError("the tokenizer's chat template does not render prompt + completion prefix-stably")
    return _clip(head, budget, "tail"), _clip(full[len(head):].rstrip(), budget, "head")


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _fit(prompt: list[int], completion: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Keep the prompt's end and the completion's start so the pair fits ``max_length``."""
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion
    keep_prompt = max(max_length - len(completion), max_length // 2)
    prompt = prompt[-keep_prompt:] if keep_prompt else []
    return prompt, completion[: max_length - len(prompt)]


def _pair(tokenizer: PreTrainedTokenizerBase, prompt: Any, completion: Any,
          max_length: int) -> tuple[list[int], list[int]]:
    head, tail = split_prompt_completion(tokenizer, prompt, completion, char_budget(tokenizer, max_length))
    return _ids(tokenizer, head), _ids(tokenizer, tail)


def _longer(pairs: list[tuple[list[int], list[int]]], max_length: int) -> bool:
    return any(len(p) + len(c) > max_length for p, c in pairs)


def tokenize_preference(tokenizer: PreTrainedTokenizerBase, row: dict, max_length: int) -> Tokens:
    """``{"chosen": (prompt_ids, completion_ids), "rejected": (...)}`` for one preference row;
    ``truncated`` says whether either side was longer than ``max_length``."""
    pairs = {side: _pair(tokenizer, row["prompt"], row[side], max_length) for side in ("chosen", "rejected")}
    out: Tokens = {side: _fit(*pair, max_length) for side, pair in pairs.items()}
    out["truncated"] = _longer(list(pairs.values()), max_length)
    return out


def tokenize_scored(tokenizer: PreTrainedTokenizerBase, prompt: Any, completion: Any, max_length: int) -> list[int]:
    """One prompt + completion as a reward model saw its training pairs (``tokenize_preference``'s sides)."""
    prompt_ids, completion_ids = _fit(*_pair(tokenizer, prompt, completion, max_length), max_length)
    return prompt_ids + completion_ids


def tokenize_kto(tokenizer: PreTrainedTokenizerBase, row: dict, kl_completion: Any, max_length: int) -> Tokens:
    """One KTO row plus its KL pair: the same prompt with another row's completion (``truncated``: the
    row's own pair was longer than ``max_length``)."""
    pair = _pair(tokenizer, row["prompt"], row["completion"], max_length)
    kl = _pair(tokenizer, row["prompt"], kl_completion, max_length)
    return {"pair": _fit(*pair, max_length), "kl": _fit(*kl, max_length), "label": bool(row["label"]),
            "truncated": _longer([pair], max_length)}


def forged_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Character spans, in ``text`` (the rendered conversation), of the message contents that spell one of the
    tokenizer's control tokens (``<|im_end|>``, ...): left to the tokenizer, a user could close their own turn
    and open a forged system turn (or, in a vision-language prompt, forge an image token). Text parts of
    multimodal contents count. Empty for ordinary text (then nothing changes)."""
    controls = list(tokenizer.get_added_vocab())
    spans, at = [], 0
    for piece in _texts(messages):
        start = text.find(piece, at)
        if start < 0:
            continue
        at = start + len(piece)
        if any(control in piece for control in controls):
            spans.append((start, at))
    return spans


def _texts(messages: list[dict]) -> list[str]:
    """The text a user wrote, in order: string contents and the text parts of multimodal ones."""
    out = []
    for message in messages:
        content = message.get("content")
        parts = [content] if isinstance(content, str) else [
            p.get("text") for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]
        out += [p for p in parts if isinstance(p, str) and p]
    return out


def guarded_ids(tokenizer: PreTrainedTokenizerBase, text: str, spans: list[tuple[int, int]]) -> list[int]:
    """``text``'s ids with the characters in ``spans`` encoded as text: a control token's string there becomes
    its characters' tokens, never the control token (the template's own stay real)."""
    ids, at = [], 0
    for start, end in spans:
        ids += _ids(tokenizer, text[at:start])
        ids += tokenizer(text[start:end], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        at = end
    return ids + _ids(tokenizer, text[at:])


def fit_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Any,
               max_length: int | None) -> tuple[list[int], bool]:
    """A prompt's ids (RL, serving, evaluation): a message list through the chat template with the
    generation prompt, a plain string as it is (as TRL's GRPO does); only the last ``max_length`` kept
    (None: all of it). The flag says whether there were more. In a message list, content that spells a
    control token is encoded as text (``forged_spans``); a plain string is the caller's whole input, as is."""
    budget = None if max_length is None else char_budget(tokenizer, max_length)
    prompt = _clip(prompt, budget, "tail")
    text = prompt if isinstance(prompt, str) else _render(tokenizer, prompt, True)
    clipped = _clip(text, budget, "tail")
    cut = len(text) - len(clipped)
    spans = [] if isinstance(prompt, str) else [(max(s - cut, 0), e - cut) for s, e in
                                                forged_spans(tokenizer, prompt, text) if e > cut]
    ids = guarded_ids(tokenizer, clipped, spans)
    if max_length is None or len(ids) <= max_length:
        return ids, False
    return ids[-max_length:], True


def tokenize_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Any, max_length: int | None) -> list[int]:
    """``fit_prompt``'s ids."""
    return fit_prompt(tokenizer, prompt, max_length)[0]


def pad_pairs(seqs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """(prompt, completion) pairs -> input_ids, attention_mask, labels, each [N, L] right-padded."""
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        labels[i, len(p):n] = torch.tensor(c, dtype=torch.long)
        mask[i, :n] = 1
    return ids, mask, labels


def _ref(rows: Sequence[Tokens], key: str) -> torch.Tensor:
    return torch.tensor([r.get(key, float("nan")) for r in rows], dtype=torch.float32)


def collate_preference(rows: Sequence[Tokens], pad_id: int) -> PreferenceBatch:
    ids, mask, labels = pad_pairs([r["chosen"] for r in rows] + [r["rejected"] for r in rows], pad_id)
    return PreferenceBatch(ids, mask, labels, torch.cat([_ref(rows, "ref_chosen"), _ref(rows, "ref_rejected")]))


def collate_reward(rows: Sequence[Tokens], pad_id: int) -> RewardBatch:
    """Preference rows for a reward model: whole sequences (prompt + answer), chosen then rejected."""
    ids, mask, _ = pad_pairs([r["chosen"] for r in rows] + [r["rejected"] for r in rows], pad_id)
    return RewardBatch(ids, mask, torch.tensor([float(r.get("margin", 0.0)) for r in rows]))


def collate_kto(rows: Sequence[Tokens], pad_id: int) -> KTOBatch:
    ids, mask, labels = pad_pairs([r["pair"] for r in rows] + [r["kl"] for r in rows], pad_id)
    return KTOBatch(ids, mask, labels, torch.cat([_ref(rows, "ref_pair"), _ref(rows, "ref_kl")]),
                    torch.tensor([r["label"] for r in rows]))


def collate_sft(rows: Sequence[Tokens], pad_id: int) -> SFTBatch:
    """SFT / pretraining rows (``input_ids``, ``labels``, optional ``position_ids``)."""
    width = max(len(r["input_ids"]) for r in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        ids[i, :k] = torch.tensor(r["input_ids"])
        labels[i, :k] = torch.tensor(r["labels"])
        mask[i, :k] = 1
        pos[i, :k] = torch.tensor(r.get("position_ids") or list(range(k)))
    return SFTBatch(ids, mask, labels, pos)


def collate_rollout(samples: Sequence[tuple[list[int], list[int], list[float]]], advantages: torch.Tensor,
                    pad_id: int, policy_version: int = 0) -> RolloutBatch:
    """(prompt ids, completion ids, the engine's log-prob of each completion token) -> a RolloutBatch, sampled
    by the weights of ``policy_version``."""
    ids, mask, labels = pad_pairs([(p, c) for p, c, _ in samples], pad_id)
    logps = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    for i, (p, c, lp) in enumerate(samples):
        logps[i, len(p) - 1: len(p) - 1 + len(c)] = torch.tensor(lp, dtype=torch.float32)
    return RolloutBatch(ids, mask, (labels[:, 1:] != IGNORE).long(), logps, advantages.float(),
                        policy_version=policy_version)
