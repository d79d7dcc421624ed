"""Config loading: YAML + overrides into typed sections; errors name file:line and key path."""

from pathlib import Path

import pytest

from rayalign.config_io import (
    batch_arithmetic, explain, load_config, parse_key_path, parse_overrides, with_overrides,
)
from rayalign.errors import ConfigError

RECIPES = sorted((Path(__file__).parents[2] / "configs" / "recipes").rglob("*.yaml"))

BASE = """\
trainer: sft
model:
  name_or_path: /models/tiny
data:
  train:
    format: sft
    datasets:
      - path: a.jsonl
        weight: 3
      - path: b.jsonl
training:
  learning_rate: 2.0e-4
  micro_batch_size: 2
  gradient_accumulation_steps: 4
scaling:
  num_workers: 2
"""


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def error_of(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_opens_with_its_launch_command(recipe):
    cfg = load_config(recipe)
    first = recipe.read_text().splitlines()[0]
    assert first == f"# rayalign train -c configs/recipes/{recipe.parent.name}/{recipe.name}"
    assert cfg.model.name_or_path


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].glob("configs/*/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_with_its_launch_command(path):
    from rayalign.config import EvalConfig, JudgeConfig, RecipeConfig

    kind = {"judges": JudgeConfig, "eval": EvalConfig}.get(path.parent.name, RecipeConfig)
    command = {"judges": "judge", "eval": "evaluate", "serve": "serve"}.get(path.parent.name)
    cfg = load_config(path, kind=kind)
    if command:
        assert path.read_text().splitlines()[0].startswith(f"# rayalign {command} -c configs/{path.parent.name}/{path.name}")
    assert cfg.model


def test_yaml_values_land_in_typed_sections(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.training.learning_rate == pytest.approx(2e-4)
    assert cfg.data.train.datasets[0].weight == 3.0
    assert cfg.data.train.datasets[1].weight == 1.0  # default
    assert cfg.scaling.strategy == "fsdp"
    with pytest.raises(Exception):
        cfg.training.learning_rate = 1.0  # sections are frozen


def test_unknown_key_names_file_line_path_and_suggestion(tmp_path):
    path = write(tmp_path, BASE.replace("  micro_batch_size: 2", "  micro_bach_size: 2"))
    assert error_of(path) == (
        f"{path}:13: training.micro_bach_size: unknown key (did you mean 'micro_batch_size'?)"
    )


def test_wrong_type_in_list_item_names_its_index_and_line(tmp_path):
    path = write(tmp_path, BASE.replace("weight: 3", "weight: heavy"))
    msg = error_of(path)
    assert msg.startswith(f"{path}:9: data.train.datasets[0].weight: Input should be a valid number")
    assert "'heavy'" in msg


def test_bad_value_and_missing_key(tmp_path):
    path = write(tmp_path, BASE.replace("num_workers: 2", "num_workers: 0"))
    assert error_of(path) == f"{path}:16: scaling.num_workers: Input should be greater than 0 (got 0)"
    path = write(tmp_path, BASE.replace("  name_or_path: /models/tiny\n", "  dtype: float32\n"))
    assert error_of(path) == f"{path}:2: model.name_or_path: required key is missing"


def test_trainer_and_data_format_must_agree(tmp_path):
    path = write(tmp_path, BASE.replace("trainer: sft", "trainer: dpo"))
    assert error_of(path) == f"{path}:6: data.train.format: trainer 'dpo' needs format 'preference', got 'sft'"
    path = write(tmp_path, BASE.replace("trainer: sft", "trainer: grpo\nreward: {functions: [{name: boxed_answer}]}"))
    assert "data.train.format: trainer 'grpo' needs format 'prompt' or 'vl_prompt', got 'sft'" in error_of(path)
    path = write(tmp_path, BASE.replace("trainer: sft", "trainer: vl_sft"))
    assert "data.train.format: trainer 'vl_sft' needs format 'vl_sft', got 'sft'" in error_of(path)
    vl = BASE.replace("trainer: sft", "trainer: grpo\nreward: {functions: [{name: boxed_answer}]}\n"
                      "algorithm: {name: ppo}").replace("format: sft", "format: vl_prompt")
    assert "algorithm.name: ppo's critic reads text only" in error_of(write(tmp_path, vl))


def test_yaml_syntax_error_and_missing_file(tmp_path):
    path = write(tmp_path, "model:\n  name_or_path: [unclosed\n")
    assert error_of(path).startswith(f"{path}:3: invalid YAML")
    assert error_of(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: config file not found"


def test_dotted_overrides_set_nested_and_list_fields(tmp_path):
    cfg = load_config(write(tmp_path, BASE), [
        "--training.learning_rate", "1e-4", "--data.train.datasets[0].path", "x.jsonl",
        "--data.train.datasets[2].path=c.jsonl", "--model.lora", "{r: 4}", "--scaling.use_gpu", "true",
    ])
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert [d.path for d in cfg.data.train.datasets] == ["x.jsonl", "b.jsonl", "c.jsonl"]
    assert cfg.model.lora.r == 4 and cfg.model.lora.alpha == 16
    assert cfg.scaling.use_gpu is True


def test_override_errors_name_the_override(tmp_path):
    path = write(tmp_path, BASE)
    assert error_of(path, ["--training.learnng_rate", "1"]) == (
        "override --training.learnng_rate: unknown key (did you mean 'learning_rate'?)")
    assert error_of(path, ["--training.max_steps", "many"]).startswith(
        "override --training.max_steps: Input should be a valid integer")
    assert error_of(path, ["--data.train.datasets[5].path", "x"]) == (
        "override --data.train.datasets[5].path: index 5 past the end of a list of 2")
    assert error_of(path, ["--training.max_steps"]) == "override --training.max_steps has no value"
    assert error_of(path, ["stray"]).startswith("unexpected argument 'stray'")
    # a section that only an override makes is the override's fault, not the file's line 1 (issue 20)
    assert error_of(path, ["--trainning.max_steps", "3"]).startswith(
        "override --trainning.max_steps: trainning: unknown key (did you mean 'training'?)")


def test_parse_key_path_and_values():
    assert parse_key_path("data.train.datasets[0].path") == ("data", "train", "datasets", 0, "path")
    assert parse_overrides(["--a.b", "3", "--c=[1, 2]", "--d", "null"]) == [
        (("a", "b"), 3), (("c",), [1, 2]), (("d",), None)]
    with pytest.raises(ConfigError, match="cannot parse key path"):
        parse_key_path("a..b")


def test_with_overrides_is_the_python_twin(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    new = with_overrides(cfg, {"training.max_steps": 7, "data.train.datasets[1].limit": 10})
    assert new.training.max_steps == 7 and new.data.train.datasets[1].limit == 10
    assert new.training.learning_rate == cfg.training.learning_rate
    with pytest.raises(ConfigError, match="training.max_steps: Input should be greater than 0"):
        with_overrides(cfg, {"training.max_steps": -1})


def test_explain_prints_docs_defaults_and_batch_arithmetic(tmp_path):
    text = explain(load_config(write(tmp_path, BASE), ["--training.max_steps", "10"]))
    lines = text.splitlines()
    lr = next(line for line in lines if line.strip().startswith("learning_rate:"))
    assert "0.0002" in lr and "# peak learning rate" in lr and "(default)" not in lr
    seed = next(line for line in lines if line.strip().startswith("seed:"))
    assert seed.rstrip().endswith("(default)")
    assert ("global batch = micro_batch_size 2 x gradient_accumulation_steps 4 x scaling.num_workers 2"
            " = 16 sequences per optimizer step") in lines
    assert "tokens per step <= 16 x data.train.max_length 1024 = 16384" in lines
    assert "sequences seen = max_steps 10 x 16 = 160" in lines


def test_rl_batch_arithmetic():
    cfg = load_config(None, ["--trainer", "grpo", "--model.name_or_path", "m", "--algorithm.prompts_per_step",
                             "6", "--algorithm.group_size", "8", "--algorithm.mini_batch_size", "20",
                             "--algorithm.ppo_epochs", "2", "--rollout.num_workers", "2",
                             "--reward.functions[0].name", "boxed_answer"])
    assert batch_arithmetic(cfg) == [
        "samples per step = prompts_per_step 6 x group_size 8 = 48",
        "optimizer updates per step = ceil(48 / mini_batch_size 20) x ppo_epochs 2 = 6",
        "rollout engines = 2, ~24 samples each per step",
    ]


def test_qwen_recipes_chain_sft_into_dpo_and_grpo_with_the_papers_settings():
    """configs/recipes/qwen2.5-0.5b: the quickstart at the laptop quickstart's model size (GPU; no download here)."""
    root = Path(__file__).parents[2] / "configs" / "recipes" / "qwen2.5-0.5b"
    sft, dpo, grpo = (load_config(root / f"{name}.yaml") for name in ("sft", "dpo", "grpo"))
    assert sft.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct" and sft.trainer == "sft"
    final = f"{sft.training.output_dir}/final"
    assert dpo.model.name_or_path == grpo.model.name_or_path == final
    assert all(c.model.dtype == "bfloat16" and c.scaling.use_gpu for c in (sft, dpo, grpo))
    assert sft.model.lora.r == dpo.model.lora.r == 8 and grpo.model.lora is None
    assert (dpo.trainer, dpo.preference.loss_type, dpo.preference.beta) == ("dpo", "sigmoid", 0.1)
    assert (grpo.algorithm.kl_coef, grpo.algorithm.loss_agg) == (0.04, "seq-mean-token-mean")  # GRPO's paper
    assert grpo.reference.colocate and grpo.rollout.num_gpus == 1
    for cfg, name in ((sft, "sft"), (dpo, "dpo"), (grpo, "grpo")):  # the data each reads is made by its comments
        header = (root / f"{name}.yaml").read_text().split("\ntrainer:")[0]
        assert f"--out {cfg.data.train.datasets[0].path}" in header, name


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_non_finite_numbers_are_refused_with_their_line(tmp_path, value):
    """Issue 20: ``learning_rate: .inf`` trained two steps into a NaN model and exited 0."""
    path = write(tmp_path, BASE.replace("learning_rate: 2.0e-4", f"learning_rate: {value}"))
    assert error_of(path).startswith(f"{path}:12: training.learning_rate: Input should be a finite number")
    nan_weight = BASE.replace("weight: 3", "weight: .nan")
    assert "data.train.datasets[0].weight: Input should be a finite number" in error_of(write(tmp_path, nan_weight))
    assert error_of(write(tmp_path, BASE), ["--training.max_grad_norm", "inf"]).startswith(
        "override --training.max_grad_norm: Input should be a finite number")


def test_a_key_given_twice_is_an_error_with_both_lines(tmp_path):
    """Issue 20: PyYAML keeps the last of two `training:` sections without a word."""
    twice = BASE + "training:\n  learning_rate: 1.0\n"
    assert error_of(write(tmp_path, twice)) == (f"{tmp_path / 'cfg.yaml'}:17: training: given twice (first on line "
                                                "11); YAML would keep only this one")
    nested = BASE.replace("  micro_batch_size: 2\n", "  micro_batch_size: 2\n  learning_rate: 3.0e-4\n")
    assert error_of(write(tmp_path, nested)).endswith(":14: training.learning_rate: given twice (first on line 12); "
                                                      "YAML would keep only this one")
