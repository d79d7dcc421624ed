"""A rayalign RL recipe as verl's PPO-trainer config: the translation, and its check against verl's schema.

``translate`` maps each recipe field onto verl's key (the README's table lists them); a recipe setting verl
has no place for is one error naming the key, never dropped. ``compose`` loads verl's own Hydra config
(``verl/trainer/config/ppo_trainer.yaml`` from the installed verl, read as data: verl's Python is not
imported here, it belongs to verl's runtime env) in struct mode, merges the translation, then the user's
``verl_overrides``: a key verl does not have is rejected, so a typo never becomes a silently ignored setting.

Deviations from rayalign's own trainer, by verl's design: verl shuffles prompts with its dataloader (not
rayalign's seeded step order), truncates long prompts from the left as rayalign does, and computes the
group advantages, losses and KL itself (same formulas, verl's implementation).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from rayalign.config import RecipeConfig
from rayalign.errors import ConfigError

VERL_VERSION = "0.9.1"
# rayalign's advantage estimator and loss per algorithm -> verl's (algorithm.adv_estimator, policy_loss.loss_mode)
ADV_ESTIMATOR = {"grpo": "grpo", "dr_grpo": "grpo", "dapo": "grpo", "gspo": "grpo", "rloo": "rloo",
                 "reinforce_pp": "reinforce_plus_plus", "ppo": "gae"}
# Schulman's estimators by verl's names: k1 = log ratio, k2 = half its square, k3 = the low-variance one
KL_ESTIMATOR = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}
REWARD_BRIDGE = "pkg://rayalign.backends.verl_reward"
# keys verl reads with ``.get`` but does not declare (its users add them with Hydra's ``+key=``)
UNDECLARED = ("reward.custom_reward_function.reward_kwargs",)


def translate(cfg: RecipeConfig, train_files: list[str], val_files: list[str]) -> dict[str, Any]:
    """verl's config keys for ``cfg`` (nested), reading the prompts from the given Parquet files."""
    _refuse_unmapped(cfg)
    a, t, r, m = cfg.algorithm, cfg.training, cfg.rollout, cfg.model
    prompt_len = cfg.data.train.max_length - r.max_new_tokens
    actor = {
        "optim": {"lr": t.learning_rate, "weight_decay": t.weight_decay, "lr_warmup_steps": t.warmup_steps,
                  "lr_scheduler_type": t.lr_scheduler, "clip_grad": t.max_grad_norm},
        "grad_clip": t.max_grad_norm,
        "ppo_mini_batch_size": _mini_batch_prompts(cfg), "ppo_micro_batch_size_per_gpu": t.micro_batch_size,
        "ppo_epochs": a.ppo_epochs, "clip_ratio_low": a.clip_low, "clip_ratio_high": a.clip_high,
        "loss_agg_mode": a.loss_agg, "data_loader_seed": t.seed,
        "checkpoint": {"save_contents": ["model", "optimizer", "extra", "hf_model"]},  # hf_model: final/
        "policy_loss": {"loss_mode": "gspo" if a.name == "gspo" else "vanilla"},
        "use_kl_loss": bool(a.kl_coef) and a.name != "ppo",
    }
    if actor["use_kl_loss"]:
        actor.update(kl_loss_coef=a.kl_coef, kl_loss_type=KL_ESTIMATOR[a.kl_estimator])
    model = {"path": m.name_or_path, "tokenizer_path": m.tokenizer, "trust_remote_code": m.trust_remote_code}
    if m.lora is not None:
        model.update(lora_rank=m.lora.r, lora_alpha=m.lora.alpha, target_modules=m.lora.target_modules)
    rollout = {"name": "vllm", "n": a.group_size, "temperature": r.temperature, "top_p": r.top_p,
               "gpu_memory_utilization": r.gpu_memory_utilization, "tensor_model_parallel_size": 1,
               "seed": t.seed, "dtype": r.dtype or ("bfloat16" if m.dtype in ("auto", "bfloat16") else m.dtype),
               "log_prob_micro_batch_size_per_gpu": t.micro_batch_size}
    algorithm = {"adv_estimator": ADV_ESTIMATOR[a.name], "norm_adv_by_std_in_grpo": a.name != "dr_grpo",
                 "filter_groups": {"enable": bool(a.dynamic_sampling), "metric": "reward"},
                 "use_kl_in_reward": a.name == "ppo" and bool(a.kl_coef)}
    if a.tis_cap is not None:  # per-token truncated importance weights against the rollout engine's log-probs
        algorithm["rollout_correction"] = {"rollout_is": "token", "rollout_is_threshold": a.tis_cap}
    out = {
        "data": {"train_files": train_files, "val_files": val_files, "prompt_key": "prompt",
                 "max_prompt_length": prompt_len, "max_response_length": r.max_new_tokens,
                 "train_batch_size": a.prompts_per_step, "shuffle": True, "seed": t.seed, "truncation": "left",
                 "trust_remote_code": m.trust_remote_code},
        "actor_rollout_ref": {"actor": actor, "model": model, "rollout": rollout,
                              "ref": {"log_prob_micro_batch_size_per_gpu": t.micro_batch_size}},
        "algorithm": algorithm,
        "reward": {"custom_reward_function": {"path": REWARD_BRIDGE, "name": "compute_score", "reward_kwargs": {
            "functions": [f.model_dump(mode="json") for f in cfg.reward.functions]}}},
        "trainer": _trainer(cfg),
    }
    if a.name == "ppo":
        out["algorithm"].update(gamma=a.gamma, lam=a.lam)
        if a.kl_coef:
            out["algorithm"].update(kl_penalty=KL_ESTIMATOR[a.kl_estimator], kl_ctrl={"kl_coef": a.kl_coef})
        out["critic"] = {"optim": {"lr": cfg.critic.learning_rate}, "cliprange_value": a.value_clip,
                         "ppo_micro_batch_size_per_gpu": t.micro_batch_size,
                         "model": {"path": cfg.critic.init or m.name_or_path, "tokenizer_path": m.tokenizer or
                                   m.name_or_path}}
        out["trainer"]["critic_warmup"] = cfg.critic.warmup_steps
    return out


def _trainer(cfg: RecipeConfig) -> dict[str, Any]:
    t, out = cfg.training, Path(cfg.training.output_dir).resolve()
    steps = t.max_steps
    return {
        "total_training_steps": steps, "total_epochs": max(1, math.ceil(t.num_epochs)),
        "save_freq": t.save_steps or steps or 1_000_000,  # any positive value saves the last step too
        "test_freq": t.eval_steps or -1,
        "val_before_train": cfg.data.eval is not None, "logger": ["console", "file"],
        "project_name": "rayalign", "experiment_name": out.name, "default_local_dir": str(out / "verl"),
        "resume_mode": "auto" if t.resume == "auto" else "disable", "max_actor_ckpt_to_keep": t.save_total_limit,
        "n_gpus_per_node": cfg.scaling.num_workers, "nnodes": 1,
    }


def _mini_batch_prompts(cfg: RecipeConfig) -> int:
    """verl counts its mini batch in prompts (each with rollout.n samples); rayalign in samples."""
    a = cfg.algorithm
    if a.mini_batch_size is None:
        return a.prompts_per_step
    if a.mini_batch_size % a.group_size:
        raise ConfigError(f"algorithm.mini_batch_size: verl takes whole groups; {a.mini_batch_size} samples is "
                          f"not a multiple of group_size {a.group_size}")
    return a.mini_batch_size // a.group_size


def _refuse_unmapped(cfg: RecipeConfig) -> None:
    """Recipe settings verl's trainer has no place for: one error each, before anything starts."""
    a, t = cfg.algorithm, cfg.training
    unmapped = {
        ("reward", "models"): (cfg.reward.models, "verl serves a reward model on its own rollout server: set "
                                                  "reward.reward_model.* through verl_overrides"),
        ("reward", "judge"): (cfg.reward.judge, "an LLM judge as reward runs on rayalign's trainer (trainer: grpo)"),
        ("algorithm", "overlong_buffer"): (a.overlong_buffer, "verl's overlong penalty is its DAPO reward "
                                                              "manager's: set it through verl_overrides"),
        ("algorithm", "async_steps"): (a.async_steps, "verl's async modes are its trainer.v1.* settings"),
        ("rollout", "engine"): (cfg.rollout.engine == "hf", "verl's rollout is vllm"),
        ("training", "max_grad_norm"): (t.max_grad_norm is None, "verl always clips: give a norm"),
        ("training", "stop_after_steps"): (t.stop_after_steps, "not a verl setting"),
    }
    for key, (value, why) in unmapped.items():
        if value:
            raise ConfigError(f"{'.'.join(key)}: trainer verl_grpo cannot take this setting ({why})")
    if t.lr_scheduler == "linear":
        raise ConfigError("training.lr_scheduler: verl schedules constant or cosine, not linear")
    if a.name == "ppo" and not a.whiten_advantages:
        raise ConfigError("algorithm.whiten_advantages: verl's GAE always whitens the advantages")
    if cfg.critic.num_workers != 1 and a.name == "ppo":
        raise ConfigError("critic.num_workers: verl shards its critic over the same GPUs as the actor; remove the key")
    if not cfg.reward.functions:
        raise ConfigError("reward.functions: trainer verl_grpo needs at least one reward function")


def config_dir() -> Path:
    """verl's own config directory, found without importing verl (whose Python is for its runtime env)."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"trainer verl_grpo needs verl's config schema on the driver: pip install 'rayalign[verl]' "
                          f"&& pip install --no-deps verl=={VERL_VERSION}")
    return Path(spec.submodule_search_locations[0]) / "trainer" / "config"


def compose(translated: dict[str, Any], overrides: dict[str, Any]):
    """verl's ``ppo_trainer`` config with the translation and then ``overrides`` (dotted keys) merged in;
    a key verl's schema lacks is a ConfigError naming it."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = hydra_compose(config_name="ppo_trainer")
    OmegaConf.set_struct(cfg, True)
    for key, value in _flatten(translated):
        if key in UNDECLARED:
            parent, _, leaf = key.rpartition(".")
            with open_dict(OmegaConf.select(cfg, parent)):
                OmegaConf.select(cfg, parent)[leaf] = value
            continue
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except (ConfigKeyError, ConfigAttributeError):
            raise ConfigError(f"verl {VERL_VERSION}'s config has no key '{key}' (rayalign's translation; a bug of "
                              "ours)") from None
    for key, value in overrides.items():
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except (ConfigKeyError, ConfigAttributeError):
            raise ConfigError(f"verl_overrides.{key}: verl {VERL_VERSION}'s config has no such key") from None
    return cfg


def _flatten(tree: dict[str, Any], prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value and f"{prefix}{key}" not in UNDECLARED:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
