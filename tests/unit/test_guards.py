"""Run guards (issue 20): non-finite losses, gradient norms and weights are caught, with the step named."""

import math

import pytest
import torch

from rayalign.errors import RunError
from rayalign.training.guards import NonFiniteError, check_step, check_weights


def test_check_step_names_every_bad_value():
    check_step(3, loss=2.5, grad_norm=1e9)  # large is not broken
    with pytest.raises(NonFiniteError, match=r"^step 3: loss is nan, grad_norm is inf; stopped before"):
        check_step(3, loss=math.nan, grad_norm=math.inf)
    assert issubclass(NonFiniteError, RunError)  # the CLI prints it as one line, exit 1


def test_check_weights_names_the_tensor():
    state = {"a.weight": torch.ones(2), "b.bias": torch.tensor([1.0, float("-inf")]), "c": torch.tensor([1])}
    with pytest.raises(NonFiniteError, match=r"^step 9: weight b.bias holds NaN or inf; not saved$"):
        check_weights(9, state)
    check_weights(9, {"a.weight": torch.ones(2), "steps": torch.tensor([5])})


def test_error_survives_pickling():  # it crosses Ray from a worker to the driver
    import pickle

    err = pickle.loads(pickle.dumps(NonFiniteError("step 2: loss is nan")))
    assert str(err) == "step 2: loss is nan" and isinstance(err, NonFiniteError)


class S:  # a scored sample: failure messages and the term of each
    def __init__(self, *terms):
        self.failed_terms = list(terms)
        self.failures = [f"reward fn '{t}' raised TypeError: f() got an unexpected keyword argument 'answer'"
                         for t in terms]


def test_reward_failures_are_counted_reported_rate_limited_and_stop_the_run():
    from rayalign.training.guards import RewardFailureError, RewardFailures

    policy = RewardFailures(max_share=0.5, patience=3, report_every=10)
    metrics, lines = policy.observe(1, [S("mine"), S(), S(), S()])  # 1 of 4: a bug to show, not to stop
    assert metrics == {"reward_failures/mine": 1.0}
    assert lines == ["step 1: reward mine failed on 1 of 4 samples (1 so far), e.g. reward fn 'mine' raised "
                     "TypeError: f() got an unexpected keyword argument 'answer'"]
    assert policy.observe(2, [S("mine"), S("mine", "judge"), S("mine"), S()])[1][0].startswith(
        "step 2: reward judge failed on 1 of 4")  # 'mine' was reported at step 1: quiet until step 11
    policy.observe(3, [S("mine")] * 4)
    assert policy.streak == 2
    with pytest.raises(RewardFailureError, match=r"^step 4: rewards failed on more than 50% of the samples for 3 "
                                                 r"steps in a row .*; 4 of 4 this step, e.g. reward fn 'mine'"):
        policy.observe(4, [S("mine")] * 4)
    assert policy.totals == {"mine": 12, "judge": 1}


def test_a_good_step_resets_the_streak():
    from rayalign.training.guards import RewardFailures

    policy = RewardFailures(max_share=0.5, patience=2)
    for step in range(1, 10):  # failing every other step never stops the run
        policy.observe(step, [S("f")] * 4 if step % 2 else [S()] * 4)
    assert policy.totals["f"] == 20
