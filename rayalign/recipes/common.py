"""What every training driver does to its config and data before it starts workers: make local paths
absolute and refuse a step larger than the data (the output directory's rules live in
``recipes/output_dir.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from rayalign.config import RecipeConfig
from rayalign.errors import UserError


def tokenize_splits(cfg: RecipeConfig, splits: dict, tokenize_split, tokenizer,
                    echo) -> tuple[list[dict], list[dict] | None]:
    """(train rows, eval rows) through a recipe's ``tokenize_split``; its notes (rows that did not fit
    max_length) go to ``echo``, then the step is checked against the train rows left."""
    out: dict[str, list[dict] | None] = {"eval": None}
    for name in ("train", "eval"):
        split = getattr(cfg.data, name)
        if split is not None:
            out[name], notes = tokenize_split(splits[name], split, tokenizer, cfg.trainer, name)
            for note in notes:
                echo(note)
    check_step_fits(cfg, len(out["train"]))
    if out["eval"] is not None and len(out["eval"]) < cfg.scaling.num_workers:  # eval_loss would be 0
        raise UserError(f"data.eval: {len(out['eval'])} rows for scaling.num_workers {cfg.scaling.num_workers}: "
                        "every worker scores an equal share of the eval rows; add rows or drop data.eval")
    return out["train"], out["eval"]


def check_step_fits(cfg: RecipeConfig, rows: int) -> None:
    """A step takes distinct rows: one larger than the training data would take some twice (``DataOrder``
    wraps around within the step), so it is refused with the keys that size it."""
    if cfg.trainer == "grpo":
        size = cfg.algorithm.prompts_per_step
        sized = f"algorithm.prompts_per_step {size}"
    else:
        t, s = cfg.training, cfg.scaling
        size = t.micro_batch_size * t.gradient_accumulation_steps * s.num_workers
        sized = (f"training.micro_batch_size {t.micro_batch_size} x training.gradient_accumulation_steps "
                 f"{t.gradient_accumulation_steps} x scaling.num_workers {s.num_workers} = {size}")
    if size > rows:
        raise UserError(f"{sized} > {rows} rows in data.train: a step would repeat rows; make the step "
                        "smaller or add rows")


def local_paths(cfg: RecipeConfig) -> RecipeConfig:
    """Make local model paths (the policy's, the reward models', the critic's) absolute: Ray workers run in their own
    working directory."""
    update = {key: str(Path(value).resolve()) for key in ("name_or_path", "tokenizer")
              if (value := getattr(cfg.model, key)) and Path(value).exists()}
    models = [m.model_copy(update={"path": str(Path(m.path).resolve())}) if Path(m.path).exists() else m
              for m in cfg.reward.models]
    init = cfg.critic.init
    critic = cfg.critic.model_copy(update={"init": str(Path(init).resolve()) if init and Path(init).exists() else init})
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=update), "critic": critic,
                                  "reward": cfg.reward.model_copy(update={"models": models}),
                                  "scaling": _deepspeed_inlined(cfg)})


def _deepspeed_inlined(cfg: RecipeConfig):
    """``scaling`` with a ``deepspeed_config`` file read into the config (workers on other nodes need no file),
    and the DeepSpeed config it makes checked against the recipe now, before anything starts."""
    s = cfg.scaling
    if s.strategy != "deepspeed":
        return s
    if isinstance(s.deepspeed_config, str):
        path = Path(s.deepspeed_config)
        try:
            content = json.loads(path.read_text())
        except OSError as exc:
            raise UserError(f"scaling.deepspeed_config: cannot read {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"scaling.deepspeed_config: {path}:{exc.lineno}: not JSON: {exc.msg}") from None
        if not isinstance(content, dict):
            raise UserError(f"scaling.deepspeed_config: {path}: a JSON object was expected")
        s = s.model_copy(update={"deepspeed_config": content})
    from rayalign.training.rl_step import micro_batches_per_update
    from rayalign.training.zero import ds_config

    accumulation = (micro_batches_per_update(cfg.algorithm, cfg.training, s.num_workers) if cfg.trainer == "grpo"
                    else cfg.training.gradient_accumulation_steps)
    ds_config(s, cfg.training, accumulation, cfg.model.dtype)
    return s
