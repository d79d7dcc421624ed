"""trainer: verl_grpo without running verl (verl's trainer needs CUDA: tests/gpu/test_verl_gpu.py): each
shipped RL recipe translates into a config verl's own Hydra schema accepts (struct mode: unknown keys are
rejected) and verl's own ``validate_config`` passes (its typed config classes, batch divisibility, micro
batches), each algorithm lands on verl's estimator and loss, verl_overrides win, recipe settings verl has no
place for are refused by key; prompt rows round-trip through verl's Parquet layout; the reward bridge scores
as rayalign's reward functions do; verl's file-logger rows become metrics.jsonl under rayalign's names."""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml
from omegaconf import OmegaConf

from rayalign.backends import verl as backend
from rayalign.backends.verl_config import VERL_VERSION
from rayalign.backends.verl_reward import compute_score
from rayalign.config import RewardFnConfig
from rayalign.config_io import explain, load_config, with_overrides
from rayalign.data.tasks import generate, to_row
from rayalign.errors import ConfigError, RunError
from rayalign.rewards.registry import WeightedReward

ROOT = Path(__file__).parents[2]
SHIPPED = ["tiny/grpo.yaml", "tiny/ppo.yaml", "qwen2.5-0.5b/grpo.yaml", "qwen2.5-0.5b/verl_grpo.yaml"]


def verl_recipe(path="tiny/grpo.yaml", **updates):
    cfg = load_config(ROOT / "configs" / "recipes" / path, ["--trainer", "verl_grpo"])
    if cfg.reward.models:  # verl serves reward models itself (refused below): the rule reward instead
        cfg = with_overrides(cfg, {"reward.models": [], "reward.functions": [{"name": "letter_count"}]})
    return with_overrides(cfg, updates) if updates else cfg


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_rl_recipes_compose_with_verls_schema(path):
    cfg = verl_recipe(path)
    v = backend.verl_config(cfg)
    a, t = cfg.algorithm, cfg.training
    actor = v.actor_rollout_ref.actor
    assert v.data.train_batch_size == a.prompts_per_step and v.actor_rollout_ref.rollout.n == a.group_size
    assert actor.optim.lr == t.learning_rate and actor.grad_clip == t.max_grad_norm
    assert actor.ppo_mini_batch_size == (a.mini_batch_size or a.prompts_per_step * a.group_size) // a.group_size
    assert actor.clip_ratio_low == a.clip_low and actor.clip_ratio_high == a.clip_high
    assert actor.loss_agg_mode == a.loss_agg and v.trainer.total_training_steps == t.max_steps
    assert v.data.max_prompt_length + v.data.max_response_length == cfg.data.train.max_length
    assert v.actor_rollout_ref.model.path == cfg.model.name_or_path and v.actor_rollout_ref.rollout.name == "vllm"
    bridge = v.reward.custom_reward_function
    assert bridge.path == "pkg://rayalign.backends.verl_reward" and bridge.name == "compute_score"
    assert OmegaConf.to_container(bridge.reward_kwargs.functions) == [f.model_dump(mode="json")
                                                                      for f in cfg.reward.functions]
    assert v.trainer.default_local_dir == str(Path(t.output_dir).resolve() / "verl")
    assert "hf_model" in actor.checkpoint.save_contents  # final/ comes from it
    assert v.data.train_files == [str(Path(t.output_dir).resolve() / "verl" / "data" / "train.parquet")]


@pytest.mark.parametrize("name,estimator,loss_mode,norm_by_std,kl_loss", [
    ("grpo", "grpo", "vanilla", True, ("low_var_kl", 0.04)), ("dr_grpo", "grpo", "vanilla", False, None),
    ("dapo", "grpo", "vanilla", True, None), ("gspo", "grpo", "gspo", True, None), ("rloo", "rloo", "vanilla", True, None),
    ("reinforce_pp", "reinforce_plus_plus", "vanilla", True, ("mse", 0.001)), ("ppo", "gae", "vanilla", True, None)])
def test_each_algorithm_lands_on_verls_estimator_loss_and_kl(name, estimator, loss_mode, norm_by_std, kl_loss):
    cfg = verl_recipe(**{"algorithm": {"name": name, "prompts_per_step": 16, "group_size": 8}})
    v = backend.verl_config(cfg)
    actor, alg = v.actor_rollout_ref.actor, v.algorithm
    assert alg.adv_estimator == estimator and actor.policy_loss.loss_mode == loss_mode
    assert alg.norm_adv_by_std_in_grpo == norm_by_std and actor.loss_agg_mode == cfg.algorithm.loss_agg
    assert actor.use_kl_loss == (kl_loss is not None)
    if kl_loss:
        assert (actor.kl_loss_type, actor.kl_loss_coef) == kl_loss
    assert alg.filter_groups.enable == (name == "dapo")  # DAPO's dynamic sampling
    if name == "ppo":  # InstructGPT's KL in the reward (k1 at 0.02), GAE, the critic from the policy
        assert alg.use_kl_in_reward and alg.kl_penalty == "kl" and alg.kl_ctrl.kl_coef == 0.02
        assert (alg.gamma, alg.lam) == (1.0, 0.95) and v.critic.cliprange_value == 0.2
        assert v.critic.model.path == cfg.model.name_or_path and v.trainer.critic_warmup == cfg.critic.warmup_steps


VALIDATE = """
import sys
from omegaconf import OmegaConf
from verl.trainer import main_ppo
for path in sys.argv[1:]:
    config = OmegaConf.load(path)
    main_ppo.validate_config(config=config, use_reference_policy=main_ppo.need_reference_policy(config),
                             use_critic=main_ppo.need_critic(config))
    print("valid", path)
"""


def test_verls_own_validation_accepts_the_translations(tiny_model_dir, tmp_path):
    """verl's validate_config instantiates its typed config classes (types, ranges, the model's HF config) and
    checks the batch arithmetic against the GPU count; in a subprocess, since importing verl patches libraries."""
    cases = [(path, {}) for path in SHIPPED] + [
        ("tiny/grpo.yaml", {"algorithm": {"name": name, "prompts_per_step": 16, "group_size": 8}, "scaling.num_workers": 8,
                            "reference.colocate": False})
        for name in ("grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp", "ppo")]
    files = []
    for i, (path, updates) in enumerate(cases):
        cfg = verl_recipe(path, **{**updates, "model.name_or_path": str(tiny_model_dir), "critic.init": None})
        files.append(tmp_path / f"{i}.yaml")
        files[-1].write_text(OmegaConf.to_yaml(backend.verl_config(cfg)))
    done = subprocess.run([sys.executable, "-c", VALIDATE, *map(str, files)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("valid ") == len(cases)


def test_verl_overrides_win_and_an_unknown_key_is_named():
    cfg = verl_recipe(**{"verl_overrides": {"actor_rollout_ref.rollout.tensor_model_parallel_size": 2,
                                            "actor_rollout_ref.actor.optim.lr": 3e-6, "trainer.logger": ["console"]},
                         "algorithm.tis_cap": 2.0})
    v = backend.verl_config(cfg)
    assert v.actor_rollout_ref.rollout.tensor_model_parallel_size == 2 and v.actor_rollout_ref.actor.optim.lr == 3e-6
    assert list(v.trainer.logger) == ["console"]
    assert v.trainer.test_freq == -1 and backend.verl_config(verl_recipe(**{"training.eval_steps": 5})).trainer.test_freq == 5
    assert v.algorithm.rollout_correction.rollout_is == "token" and v.algorithm.rollout_correction.rollout_is_threshold == 2.0
    with pytest.raises(ConfigError, match=rf"^verl_overrides.actor_rollout_ref.actor.lr_typo: verl {VERL_VERSION}'s "
                                          "config has no such key$"):
        backend.verl_config(verl_recipe(**{"verl_overrides": {"actor_rollout_ref.actor.lr_typo": 1}}))


@pytest.mark.parametrize("updates,message", [
    ({"reward.models": [{"path": "rm"}]}, r"^reward.models: trainer verl_grpo cannot take this setting \(verl serves"),
    ({"training.lr_scheduler": "linear"}, "^training.lr_scheduler: verl schedules constant or cosine"),
    ({"algorithm.mini_batch_size": 12}, "^algorithm.mini_batch_size: verl takes whole groups; 12 samples"),
    ({"algorithm.async_steps": 1}, "^algorithm.async_steps: trainer verl_grpo cannot take"),
    ({"rollout.engine": "hf"}, "^rollout.engine: trainer verl_grpo cannot take this setting \\(verl's rollout is vllm"),
])
def test_settings_verl_has_no_place_for_are_refused_by_key(updates, message):
    with pytest.raises(ConfigError, match=message):
        backend.verl_config(verl_recipe(**updates))


def test_verl_keys_on_another_trainer_are_refused(tmp_path):
    cfg = load_config(ROOT / "configs" / "recipes" / "tiny" / "grpo.yaml")
    with pytest.raises(ConfigError, match="verl_overrides: only trainer verl_grpo uses it, not grpo"):
        with_overrides(cfg, {"verl_overrides": {"trainer.nnodes": 2}})


def test_config_explain_shows_the_composed_verl_config():
    text = explain(verl_recipe())
    verl_part = yaml.safe_load(text.split("# verl's config: the translation, then verl_overrides")[1].split("\n", 1)[1])
    assert verl_part["actor_rollout_ref"]["rollout"]["n"] == 8 and verl_part["algorithm"]["adv_estimator"] == "grpo"


def rows():
    out = [to_row(ex, "prompt") for task in ("letter_count", "arithmetic", "countdown") for ex in generate(task, 3, 1)]
    out.append({"prompt": "plain text prompt", "answer": 7})  # a string prompt and fewer metadata keys
    return out


def test_parquet_round_trips_in_verls_layout(tmp_path):
    given = rows()
    path = backend.write_parquet(given, tmp_path / "train.parquet", "train")
    back = datasets.Dataset.from_parquet(str(path)).to_list()
    assert len(back) == len(given) and set(back[0]) == {"data_source", "ability", "prompt", "reward_model",
                                                        "extra_info"}
    for i, (row, got) in enumerate(zip(given, back)):
        messages = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        assert got["prompt"] == messages and got["data_source"] == "train"
        assert got["reward_model"] == {"style": "rule", "ground_truth": str(row["answer"])}
        assert got["extra_info"]["index"] == i
        kept = json.loads(got["extra_info"]["rayalign"])
        assert kept == {"prompt": row["prompt"], "metadata": {k: v for k, v in row.items() if k != "prompt"}}


def test_reward_bridge_scores_as_rayaligns_reward_functions(tmp_path):
    functions = [{"name": "letter_count"}, {"name": "arithmetic", "weight": 2.0},
                 {"name": "format_regex", "weight": 0.5, "kwargs": {"full": False}}]
    reference = WeightedReward([RewardFnConfig(**f) for f in functions])
    as_verl_passes_them = OmegaConf.create({"functions": functions}).functions  # a ListConfig of DictConfigs
    back = datasets.Dataset.from_parquet(str(backend.write_parquet(rows(), tmp_path / "t.parquet", "train")))
    exs = [ex for task in ("letter_count", "arithmetic", "countdown") for ex in generate(task, 3, 1)]
    checked = 0
    for row, ex in zip(back, exs):
        for completion in (ex.solution, ex.wrong, "no idea"):
            got = compute_score(row["data_source"], completion, row["reward_model"]["ground_truth"],
                                row["extra_info"], functions=as_verl_passes_them)
            meta = {k: v for k, v in to_row(ex, "prompt").items() if k != "prompt"}
            total, parts = reference(to_row(ex, "prompt")["prompt"], completion, **meta)
            assert got == {"score": total, **{f"reward/{k}": v for k, v in parts.items()}}
            checked += total != 0
    assert checked >= 6  # right answers scored, not only zeros


def test_verl_log_becomes_metrics_under_rayaligns_names(tmp_path):
    log = tmp_path / "verl.jsonl"
    log.write_text("".join(json.dumps({"step": s, "data": {"critic/score/mean": 0.1 * s, "actor/pg_loss": -s,
                                                            "actor/lr": 1e-6, "timing_s/step": 2.5,
                                                            "perf/throughput": 900.0, "note": "x"}}) + "\n"
                           for s in (1, 2)))
    assert backend.import_metrics(log, tmp_path / "out") == 2
    logged = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [{"step": s, "reward_mean": 0.1 * s, "loss": -s, "lr": 1e-6, "step_time_s": 2.5,
                       "perf/throughput": 900.0} for s in (1, 2)]


def test_final_is_the_newest_checkpoints_hf_weights(tmp_path):
    work = tmp_path / "verl"
    for step in (2, 10):
        hf = work / f"global_step_{step}" / "actor" / "huggingface"
        hf.mkdir(parents=True)
        (hf / "model.safetensors").write_text(f"step {step}")
    final = backend.collect_final(work, tmp_path, 10, echo=lambda _: None)
    assert (final / "model.safetensors").read_text() == "step 10"  # 10 after 2, not in string order
    with pytest.raises(RunError, match="wrote no HF weights .* needs hf_model"):
        backend.collect_final(tmp_path / "nothing", tmp_path, 3)


def test_runtime_env_gives_verl_its_own_pins_and_ships_rayalign(tmp_path):
    python = backend.ship_rayalign(tmp_path / "python")
    assert (python / "rayalign" / "backends" / "verl_reward.py").is_file()
    assert not list(python.rglob("__pycache__"))
    env = backend.runtime_env(verl_recipe(), tmp_path / "m.jsonl", python)
    assert env == {"pip": {"packages": [f"verl[vllm]=={VERL_VERSION}"], "pip_check": False},
                   "env_vars": {"VERL_FILE_LOGGER_PATH": str(tmp_path / "m.jsonl"), "PYTHONPATH": str(python)}}
    mine = backend.runtime_env(verl_recipe(**{"verl_runtime_env": {"conda": "verl", "env_vars": {"PYTHONPATH": "/u"}}}),
                               tmp_path / "m.jsonl", python)
    assert "pip" not in mine and mine["conda"] == "verl" and mine["env_vars"]["PYTHONPATH"] == f"{python}:/u"
