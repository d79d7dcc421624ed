"""Resolving reward names (built-ins or ``module:function``) and combining them by weight."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

from rayalign.config import RewardFnConfig
from rayalign.errors import ConfigError
from rayalign.rewards.builtin import BUILTINS

RewardFn = Callable[..., float]


def resolve(name: str, where: str = "reward.functions") -> RewardFn:
    """A built-in by name, or ``package.module:function`` imported from the Python path."""
    if ":" not in name:
        if name not in BUILTINS:
            raise ConfigError(f"{where}.name: unknown reward '{name}' (built-ins: {', '.join(BUILTINS)}; "
                              "or give 'module:function')")
        return BUILTINS[name]
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}.name: cannot import '{module_name}': {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{where}.name: '{module_name}' has no function '{attr}'")
    return fn


class WeightedReward:
    """sum_i weight_i * fn_i(prompt, completion, **metadata, **kwargs_i); also each term by name."""

    def __init__(self, functions: Sequence[RewardFnConfig]):
        self.terms = [(f.name, f.weight, resolve(f.name, f"reward.functions[{i}]"), dict(f.kwargs))
                      for i, f in enumerate(functions)]

    def __call__(self, prompt: Any, completion: str, **metadata: Any) -> tuple[float, dict[str, float]]:
        parts = {name: float(fn(prompt, completion, **{**metadata, **kwargs}))
                 for name, _, fn, kwargs in self.terms}
        return sum(w * parts[name] for name, w, _, _ in self.terms), parts
