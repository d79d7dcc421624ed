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
