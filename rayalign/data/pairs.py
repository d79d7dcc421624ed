"""On-policy preference pairs: a model's own sampled answers, ranked by reward functions.

Input: ``rayalign infer --infer.n K`` output (each prompt row plus its ``responses``). For each prompt the
chosen answer is one with the highest reward and the rejected one with the lowest; a prompt whose
answers all score the same says nothing about preference and is dropped (counted as all right or all
wrong). Pairs drawn from the policy itself are what DPO's derivation assumes (the reference model's
samples), unlike hand-written near misses the model would never produce.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from rayalign.errors import DataError

META_DROPPED = ("responses", "response", "finish_reason", "completion_tokens")


def rank_pairs(rows: Iterable[tuple[str, dict]], score: Callable[[Any, str, dict], float]
               ) -> tuple[list[dict], dict[str, int]]:
    """Preference rows (``prompt``, ``chosen``, ``rejected`` and both rewards) and counts: ``pairs``,
    ``all_same`` (no pair: every answer scored alike), ``prompts``."""
    pairs, counts = [], {"prompts": 0, "all_same": 0}
    for where, row in rows:
        answers = row.get("responses")
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{where}: field 'responses' (a list of answers, from `rayalign infer` with "
                            "--infer.n 2 or more) is missing")
        counts["prompts"] += 1
        metadata = {k: v for k, v in row.items() if k not in ("prompt", *META_DROPPED)}
        scored = [(score(row["prompt"], text, metadata), text) for text in answers]
        best, worst = max(scored, key=lambda s: s[0]), min(scored, key=lambda s: s[0])
        if best[0] == worst[0]:
            counts["all_same"] += 1
            continue
        pairs.append({"prompt": row["prompt"], "chosen": _turn(row["prompt"], best[1]),
                      "rejected": _turn(row["prompt"], worst[1]),
                      "chosen_reward": best[0], "rejected_reward": worst[0]})
    return pairs, {**counts, "pairs": len(pairs)}


def pairs_file(samples: Path, out: Path, rewards: list[str]) -> dict[str, int]:
    """``rayalign data pairs``: rank ``samples`` (infer output) by the summed ``rewards`` (built-in names or
    ``module:fn``) and write the preference rows to ``out``; returns the counts."""
    from rayalign.config import RewardFnConfig
    from rayalign.data.sources import iter_dicts
    from rayalign.outputs import write_text
    from rayalign.rewards.registry import WeightedReward

    total = WeightedReward([RewardFnConfig(name=name) for name in rewards])
    pairs, counts = rank_pairs(iter_dicts(str(samples)), lambda p, text, meta: total(p, text, **meta)[0])
    write_text(out, "".join(json.dumps(row) + "\n" for row in pairs))
    return counts


def _turn(prompt: Any, text: str) -> Any:
    """An answer in the prompt's layout: an assistant message list for chat prompts, else the text."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
