"""A sweep's search space, checked against the recipe before any trial starts.

``tune.search_space`` maps dotted recipe keys to one distribution each::

    training.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
    preference.beta:        {grid: [0.05, 0.1, 0.5]}
    model.lora.r:           {choice: [4, 8, 16]}
    algorithm.group_size:   {randint: [4, 9]}          # 4..8, the high end excluded (as Ray Tune's)

Every value a distribution can produce (grid/choice values, uniform and randint ends) is put into the
recipe and validated, so a wrong key or type is one line naming ``tune.search_space.KEY`` and exit 2 at
once, not a failed trial later.
"""

from __future__ import annotations

import math
from typing import Any

from rayalign.config import RecipeConfig
from rayalign.errors import ConfigError, UserError

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
RANGES = ("uniform", "loguniform", "randint")


def check(cfg: RecipeConfig) -> None:
    """Refuse, in one line, a sweep that cannot run: a bad distribution, a key or value the recipe
    refuses, a metric the trials will not log, PBT mutations outside the space, Optuna with a grid."""
    from rayalign.config_io import with_overrides

    t = cfg.tune
    if not t.search_space:
        raise UserError("tune.search_space: empty; name at least one recipe key to sweep")
    for key, dist in t.search_space.items():
        where = f"tune.search_space.{key}"
        for value in _values(where, dist):
            try:
                with_overrides(cfg, {key: value})
            except ConfigError as exc:
                raise UserError(f"{where}: {_strip(str(exc), key)} (value {value!r})") from None
    if t.search_alg == "optuna" and any(next(iter(d)) == "grid" for d in t.search_space.values()):
        raise UserError("tune.search_alg: optuna samples; it cannot take grid values (use choice)")
    unknown = [k for k in t.scheduler.mutations if k not in t.search_space]
    if t.scheduler.name == "pbt" and unknown:
        raise UserError(f"tune.scheduler.mutations: {', '.join(unknown)} not in tune.search_space")
    if t.metric.startswith("eval_") and cfg.trainer != "grpo" and (cfg.data is None or cfg.data.eval is None):
        raise UserError(f"tune.metric: {t.metric} is logged only with data.eval (held-out rows); add data.eval or "
                        "sweep on loss")
    if cfg.trainer == "verl_grpo":
        raise UserError("trainer: verl_grpo runs verl's own loop, which reports to no trial; sweep trainer: grpo")
    if cfg.reward.judge is not None:
        raise UserError("reward.judge: a judge on its own Serve app cannot run inside sweep trials; sweep without it")


def _values(where: str, dist: Any) -> list[Any]:
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in KINDS:
        raise UserError(f"{where}: give one of {', '.join(KINDS)} (as {{loguniform: [1.0e-4, 1.0e-2]}}), got {dist!r}")
    kind, arg = next(iter(dist.items()))
    if kind in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            raise UserError(f"{where}: {kind} needs a non-empty list of values, got {arg!r}")
        return arg
    if (not isinstance(arg, list) or len(arg) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                               and math.isfinite(v) for v in arg)):
        raise UserError(f"{where}: {kind} needs [low, high] numbers, got {arg!r}")
    low, high = arg
    if not low < high:
        raise UserError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "randint":
        if not all(isinstance(v, int) for v in arg) or high - low < 1:
            raise UserError(f"{where}: randint needs integers low < high (high excluded), got {arg!r}")
        return [low, high - 1]
    return [low, high]


def _strip(message: str, key: str) -> str:
    """with_overrides names the key as an override; the sweep names it as a search_space entry."""
    for prefix in (f"override --{key}: ", "config: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def domains(cfg: RecipeConfig) -> dict[str, Any]:
    """The search space as Ray Tune sampling domains (flat dotted keys: Tune splits only on '/')."""
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice, "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a)}
    return {key: make[kind](arg) for key, dist in cfg.tune.search_space.items() for kind, arg in dist.items()}


def mutations(cfg: RecipeConfig) -> dict[str, Any]:
    """PBT's explore step: grid and choice values as the list it resamples from, ranges as domains."""
    made = domains(cfg)
    return {key: (dist.get("grid") or dist.get("choice") or made[key]) for key, dist in cfg.tune.search_space.items()}
