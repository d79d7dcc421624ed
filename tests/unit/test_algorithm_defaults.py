"""Each RL algorithm runs as its paper defines it (issue #23): unset hyperparameters resolve to the paper's
values, a user's value wins, a setting the algorithm fixes is an error naming the key, and one step's loss
with the resolved values equals the number computed by hand from the paper's formula."""

import math

import pytest
import torch
import yaml

from rayalign.config import AlgorithmConfig
from rayalign.config_io import explain, load_config, with_overrides
from rayalign.errors import ConfigError
from rayalign.training.rl_step import policy_loss

GRPO = ["--trainer", "grpo", "--model.name_or_path", "m", "--reward.functions[0].name", "boxed_answer"]

# Written out from the papers, not read from ALGORITHM_DEFAULTS: this is the check on that table.
# (clip_low, clip_high, kl_coef, kl_estimator, loss_agg, dynamic_sampling)
PAPERS = {
    "grpo": (0.2, 0.2, 0.04, "k3", "seq-mean-token-mean", False),  # DeepSeekMath: eps 0.2, beta 0.04, eq. 3
    "dr_grpo": (0.2, 0.2, 0.0, None, "seq-mean-token-sum-norm", False),  # no 1/|o_i|, no KL (beta 0)
    "dapo": (0.2, 0.28, 0.0, None, "token-mean", True),  # clip-higher, token-level loss, dynamic sampling
    "gspo": (3e-4, 4e-4, 0.0, None, "seq-mean-token-mean", False),  # sequence ratio clipped to 3e-4 / 4e-4
    "rloo": (0.2, 0.2, 0.0, None, "seq-mean-token-sum", False),  # the whole sequence is one action
    "reinforce_pp": (0.2, 0.2, 0.001, "k2", "token-mean", False),  # PPO clip; k2 KL loss 1e-3 (OpenRLHF)
}
KEYS = ("clip_low", "clip_high", "kl_coef", "kl_estimator", "loss_agg", "dynamic_sampling")


def algorithm(*overrides: str) -> AlgorithmConfig:
    return load_config(None, [*GRPO, *overrides]).algorithm


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_unset_hyperparameters_take_the_papers_values(name):
    a = algorithm("--algorithm.name", name)
    assert tuple(getattr(a, key) for key in KEYS) == PAPERS[name]
    assert a.overlong_buffer is None  # opt-in everywhere: its length depends on rollout.max_new_tokens


def test_a_value_the_user_sets_wins_and_null_means_the_default():
    a = algorithm("--algorithm.name", "dapo", "--algorithm.clip_high", "0.3", "--algorithm.clip_low", "null")
    assert (a.clip_low, a.clip_high) == (0.2, 0.3)
    assert "clip_high" in a.model_fields_set and "clip_low" not in a.model_fields_set
    g = algorithm("--algorithm.name", "gspo", "--algorithm.kl_coef", "0.01")
    assert (g.kl_coef, g.kl_estimator, g.clip_low, g.clip_high) == (0.01, "k3", 3e-4, 4e-4)  # the user's call


def test_switching_algorithm_resolves_its_own_defaults():
    cfg = load_config(None, [*GRPO, "--algorithm.name", "dapo", "--algorithm.clip_low", "0.1"])
    gspo = with_overrides(cfg, {"algorithm.name": "gspo"}).algorithm
    assert (gspo.clip_low, gspo.clip_high, gspo.dynamic_sampling) == (0.1, 4e-4, False)  # the set value stays


@pytest.mark.parametrize("name, value", [("dr_grpo", "token-mean"), ("dapo", "seq-mean-token-mean"),
                                         ("gspo", "token-mean")])
def test_loss_agg_is_an_error_where_the_algorithm_fixes_it(tmp_path, name, value):
    path = tmp_path / "rl.yaml"
    path.write_text(f"trainer: grpo\nmodel:\n  name_or_path: m\nreward:\n  functions:\n    - name: boxed_answer\n"
                    f"algorithm:\n  name: {name}\n  loss_agg: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    fixed = PAPERS[name][4]
    assert str(info.value).startswith(f"{path}:9: algorithm.loss_agg: {name} fixes loss_agg at '{fixed}' (")
    algorithm("--algorithm.name", name, "--algorithm.loss_agg", fixed)  # the fixed value itself is fine


def test_settings_the_algorithm_does_not_use_are_errors():
    cases = {
        ("dapo", "kl_coef", "0.1"): "override --algorithm.kl_coef: dapo fixes kl_coef at 0.0 (the DAPO paper drops",
        ("gspo", "kl_estimator", "k2"): "override --algorithm.kl_estimator: unused with gspo: kl_coef is 0 (the "
                                        "gspo default)",
        ("grpo", "loss_agg", "seq-mean-token-sum-norm"): "override --algorithm.loss_agg: seq-mean-token-sum-norm "
                                                         "is Dr. GRPO's loss, not grpo's",
    }
    for (name, key, value), message in cases.items():
        with pytest.raises(ConfigError) as info:
            algorithm("--algorithm.name", name, f"--algorithm.{key}", value)
        assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(ConfigError, match="kl_coef is 0 \\(as set\\)"):
        algorithm("--algorithm.kl_coef", "0", "--algorithm.kl_estimator", "k1")


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_the_resolved_config_a_run_writes_loads_back_unchanged(tmp_path, name):
    cfg = load_config(None, [*GRPO, "--algorithm.name", name])
    path = tmp_path / "config.yaml"  # as recipes/grpo.py writes OUTPUT_DIR/config.yaml
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    assert load_config(path).algorithm == cfg.algorithm


def test_dapo_techniques_pass_through_to_other_algorithms():
    a = algorithm("--algorithm.name", "grpo", "--algorithm.dynamic_sampling", "true",
                  "--algorithm.overlong_buffer", "16", "--rollout.max_new_tokens", "32")
    assert a.dynamic_sampling and a.overlong_buffer == 16 and a.clip_high == 0.2


def test_explain_shows_effective_values_and_where_they_came_from():
    lines = explain(load_config(None, [*GRPO, "--algorithm.name", "dapo", "--algorithm.clip_low", "0.1"])).splitlines()
    line = {ln.strip().split(":")[0]: ln for ln in lines if ln.startswith("  ") and not ln.startswith("    ")}
    assert line["clip_high"].strip().startswith("clip_high: 0.28")
    assert line["clip_high"].rstrip().endswith("(dapo default: DAPO, Yu et al. 2025)")
    assert line["clip_low"].strip().startswith("clip_low: 0.1") and "default" not in line["clip_low"]
    assert line["dynamic_sampling"].rstrip().endswith("(dapo default: DAPO, Yu et al. 2025)")
    assert line["ppo_epochs"].rstrip().endswith("(default)")  # not an algorithm's published value


# One step's loss. Token ratios pi/pi_old: row 0 (A = +1) 1.1, 1.3, 0.75; row 1 (A = -2) 0.7, 1.25 (+ pad).
# log pi_ref - log pi = -0.3 on every token.
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.3, -9.0]], dtype=torch.float64)
LOGP = OLD + torch.tensor([[1.1, 1.3, 0.75], [0.7, 1.25, 1.0]], dtype=torch.float64).log()
REF = LOGP - 0.3
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([1.0, -2.0], dtype=torch.float64)
K3 = math.exp(-0.3) - 1 + 0.3
K2 = 0.5 * 0.3 ** 2
# -min(r A, clip(r) A) per token, eps 0.2 both sides: 1.3 -> 1.2 (A > 0) and 0.7 -> 0.8 (A < 0) clip
PPO_ROW0 = [-1.1, -1.2, -0.75]
PPO_ROW1 = [2 * 0.8, 2 * 1.25]


def one_step(name: str, logp=LOGP, old=OLD) -> tuple[float, str, dict]:
    fn, unit = policy_loss(AlgorithmConfig(name=name), max_new_tokens=4)
    loss, metrics = fn(logp, old, ADV, MASK, ref_logp=REF)
    return loss.item(), unit, metrics


def test_grpo_step_loss():
    loss, unit, m = one_step("grpo")
    seq_means = [sum(PPO_ROW0) / 3, sum(PPO_ROW1) / 2]  # 1/G sum_i 1/|o_i| sum_t
    assert loss == pytest.approx(sum(seq_means) / 2 + 0.04 * K3, rel=1e-9) and unit == "sequences"
    assert m["clip_fraction"] == pytest.approx(2 / 5) and m["kl"] == pytest.approx(K3, rel=1e-9)


def test_dr_grpo_step_loss():
    loss, unit, _ = one_step("dr_grpo")
    assert loss == pytest.approx((sum(PPO_ROW0) + sum(PPO_ROW1)) / (2 * 4), rel=1e-9)  # / (N x max_new_tokens)
    assert unit == "sequences"


def test_dapo_step_loss_clips_higher():
    loss, unit, m = one_step("dapo")
    # eps_high 0.28: the 1.3 ratio (A > 0) hits 1.28, not 1.2; eps_low 0.2: 0.7 (A < 0) hits 0.8
    assert loss == pytest.approx((-1.1 - 1.28 - 0.75 + 2 * 0.8 + 2 * 1.25) / 5, rel=1e-9) and unit == "tokens"
    assert m["clip_fraction"] == pytest.approx(2 / 5) and "kl" not in m


def test_gspo_step_loss_clips_the_sequence_ratio():
    # token log-ratios: row 0 0.004, -0.001, 0 -> s0 = e^0.001 = 1.0010 > 1 + 4e-4; row 1 -0.002, 0 ->
    # s1 = e^-0.001 = 0.9990 < 1 - 3e-4: both hit their bound (GRPO's 0.2 would clip neither)
    logp = OLD + torch.tensor([[0.004, -0.001, 0.0], [-0.002, 0.0, 0.0]], dtype=torch.float64)
    loss, unit, m = one_step("gspo", logp)
    assert loss == pytest.approx((-1.0004 + 2 * 0.9997) / 2, rel=1e-9) and unit == "sequences"
    assert m["clip_fraction"] == 1.0 and "kl" not in m


def test_rloo_step_loss():
    loss, unit, m = one_step("rloo")
    assert loss == pytest.approx((sum(PPO_ROW0) + sum(PPO_ROW1)) / 2, rel=1e-9)  # sum of token terms per sequence
    assert unit == "sequences" and "kl" not in m


def test_reinforce_pp_step_loss():
    loss, unit, m = one_step("reinforce_pp")
    assert loss == pytest.approx((sum(PPO_ROW0) + sum(PPO_ROW1)) / 5 + 0.001 * K2, rel=1e-9) and unit == "tokens"
    assert m["kl"] == pytest.approx(K2, rel=1e-9)
