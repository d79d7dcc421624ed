"""A temperature below 1e-5 samples greedily in both engines, as vLLM treats it: found by fuzzing the Serve app,
where ``temperature: 5e-324`` (valid JSON, inside OpenAI's 0..2) made the HF engine divide by a denormal and fail
with a 500."""

import pytest

from rayalign.engines.base import SamplingSpec


@pytest.mark.parametrize("temperature, greedy", [(0.0, True), (5e-324, True), (9e-6, True), (1e-5, False),
                                                 (0.7, False)])
def test_tiny_temperatures_are_greedy(temperature, greedy):
    assert SamplingSpec(temperature=temperature).greedy is greedy


def test_vllm_gets_greedy_params_for_a_denormal_temperature():
    from rayalign.engines.vllm_engine import copies_per_prompt, sampling_params

    spec = SamplingSpec(n=3, temperature=5e-324, max_new_tokens=4)
    params = sampling_params(spec)
    assert params.temperature == 0.0 and params.n == 1 and copies_per_prompt(spec) == 3
    assert sampling_params(SamplingSpec(n=3, temperature=0.5)).n == 3
