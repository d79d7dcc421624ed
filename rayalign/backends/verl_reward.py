"""rayalign's reward functions behind verl's custom reward-function hook (``reward.custom_reward_function``).

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)`` once per
sample; ``reward_kwargs.functions`` carries the recipe's ``reward.functions`` (built-ins and ``module:fn``
plugins), and ``extra_info["rayalign"]`` the prompt row as rayalign's reward workers see it (the prompt and
its metadata, JSON: Parquet would otherwise force one schema on every row's metadata). The sum is the same
weighted sum rayalign's reward workers compute; each term is returned beside it, and verl logs the extra
keys of the dict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from rayalign.config import RewardFnConfig
from rayalign.rewards.registry import WeightedReward


@lru_cache(maxsize=8)
def _reward(functions: str) -> WeightedReward:
    return WeightedReward([RewardFnConfig(**f) for f in json.loads(functions)])


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  functions: list[dict] | tuple = (), **_: Any) -> dict[str, float]:
    row = json.loads((extra_info or {}).get("rayalign") or "{}")
    total, parts = _reward(json.dumps(_plain(functions), sort_keys=True))(row.get("prompt"), solution_str,
                                                                        **row.get("metadata", {}))
    return {"score": float(total), **{f"reward/{name}": value for name, value in parts.items()}}


def _plain(value: Any) -> Any:
    """verl hands reward_kwargs over as OmegaConf containers: plain dicts and lists for JSON."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value
