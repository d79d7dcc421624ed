"""Issue 12: a sweep is refused in one line before any trial starts: a bad key or value (every value a
distribution can produce is validated against the recipe), a bad distribution, a metric that needs eval
data, PBT mutations outside the space, trials bigger than the cluster."""

import pytest

from rayalign.config import RecipeConfig
from rayalign.errors import UserError
from rayalign.tune.space import check, mutations
from rayalign.tune.sweep import _cause, trial_slots


def sweep(search_space, trainer="sft", eval_data=True, **tune) -> RecipeConfig:
    split = {"format": "sft", "datasets": [{"path": "d.jsonl"}]}
    return RecipeConfig.model_validate({
        "trainer": trainer, "model": {"name_or_path": "m"},
        "data": {"train": split, **({"eval": split} if eval_data else {})},
        "tune": {"search_space": search_space, **tune}})


@pytest.mark.parametrize("space, message", [
    ({}, "tune.search_space: empty"),
    ({"training.lr": {"grid": [1e-3]}}, "tune.search_space.training.lr: unknown key (known keys: output_dir"),
    ({"training.learning_rate": {"loguniform": [0, 1e-3]}},
     "tune.search_space.training.learning_rate: loguniform needs low > 0, got 0"),
    ({"training.learning_rate": {"uniform": [1e-3, 1e-4]}}, "uniform needs low < high, got [0.001, 0.0001]"),
    ({"training.learning_rate": {"normal": [0, 1]}}, "tune.search_space.training.learning_rate: give one of grid, "
                                                     "choice, uniform, loguniform, randint"),
    ({"training.learning_rate": 1e-3}, "give one of grid, choice"),
    ({"training.micro_batch_size": {"choice": [4, "big"]}},
     "tune.search_space.training.micro_batch_size: Input should be a valid integer"),
    ({"training.micro_batch_size": {"randint": [0, 4]}},
     "tune.search_space.training.micro_batch_size: Input should be greater than 0"),
    ({"training.micro_batch_size": {"randint": [2.5, 4]}}, "randint needs integers low < high"),
    ({"model.lora.r": {"grid": []}}, "grid needs a non-empty list of values"),
])
def test_bad_search_space_is_one_line(space, message):
    with pytest.raises(UserError) as err:
        check(sweep(space))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_metric_pbt_and_optuna_checks():
    lr = {"training.learning_rate": {"grid": [1e-4, 1e-3]}}
    with pytest.raises(UserError, match="tune.metric: eval_loss is logged only with data.eval"):
        check(sweep(lr, eval_data=False))
    check(sweep(lr, eval_data=False, metric="loss"))
    with pytest.raises(UserError, match="tune.scheduler.mutations: training.warmup_steps not in tune.search_space"):
        check(sweep(lr, scheduler={"name": "pbt", "mutations": ["training.warmup_steps"]}))
    with pytest.raises(UserError, match="tune.search_alg: optuna samples; it cannot take grid values"):
        check(sweep(lr, search_alg="optuna"))
    check(sweep({"model.lora.r": {"choice": [4, 8]}, "preference.beta": {"uniform": [0.05, 0.5]}}))


def test_pbt_mutations_resample_grid_values():
    got = mutations(sweep({"training.learning_rate": {"grid": [1e-4, 1e-3]}, "training.warmup_steps": {"choice": [0, 5]}}))
    assert got == {"training.learning_rate": [1e-4, 1e-3], "training.warmup_steps": [0, 5]}


def test_trials_bigger_than_the_cluster_are_refused_and_slots_counted():
    cfg = sweep({"training.learning_rate": {"grid": [1e-3]}})
    cfg = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"num_workers": 2})})  # + the trial's 0.01
    with pytest.raises(UserError, match=r"^a trial asks for 2.01 CPU but the Ray cluster has 2 CPU \(sweeps leave "
                                        r"0.5 CPU to Ray\); lower scaling.num_workers, scaling.cpus_per_worker$"):
        trial_slots(cfg, {"CPU": 2.0})
    assert trial_slots(cfg, {"CPU": 8.0}) == 3
    small = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"num_workers": 1, "cpus_per_worker": 0.9})})
    assert trial_slots(small, {"CPU": 2.0}) == 1  # 2 x 0.91 would leave Ray 0.18 CPU
    half = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"num_workers": 1, "cpus_per_worker": 0.5})})
    assert trial_slots(half, {"CPU": 2.0}) == 2


@pytest.mark.parametrize("name", ["sft_lr", "dpo_beta", "grpo_pbt"])
def test_shipped_sweeps_pass_their_checks(name):
    from pathlib import Path

    from rayalign.config_io import load_config

    path = Path(__file__).parents[2] / "configs" / "sweeps" / "tiny" / f"{name}.yaml"
    assert path.read_text().startswith(f"# rayalign tune -c configs/sweeps/tiny/{name}.yaml\n")
    check(load_config(path))


def test_a_failed_trials_error_is_its_root_cause():
    wrapped = RuntimeError("The actor with name ImplicitFunc failed to import on the worker:\n"
                           "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                           "ModuleNotFoundError: No module named 'mine'\n\nDuring handling of the above exception, "
                           "another exception occurred:\nRuntimeError: The actor failed\n"
                           "An unexpected internal error occurred while the worker was executing a task.")
    assert _cause(wrapped) == "ModuleNotFoundError: No module named 'mine'"
    assert _cause(RuntimeError("just a line")) == "just a line"


def test_a_trials_id_comes_from_its_directory():
    from rayalign.tune.sweep import _trial_id

    assert _trial_id("/s/tune/run_trial_e7693_00001_1_training_learning_rate=0.0050_2026-11-30_23-08-40") == \
        "e7693_00001"
    assert _trial_id(None) is None
