"""The HF fallback engine on the tiny model: n samples per prompt with raw log-probs, seeds, greedy,
stop at EOS, weight loading and the fingerprint."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rayalign.config import ModelConfig
from rayalign.engines.base import SamplingSpec, sync_fingerprint
from rayalign.engines.hf_engine import HFEngine, unique_tensors
from rayalign.models.logprobs import token_logps

PROMPT = "<|im_start|>user\nHow many 'r' in 'strawberry'?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(ModelConfig(name_or_path=str(tiny_model_dir)))


def _reference_logprobs(model, prompt, tokens):
    ids = torch.tensor([prompt + tokens])
    labels = torch.tensor([[-100] * len(prompt) + tokens])
    with torch.no_grad():
        logp, _ = token_logps(model(ids).logits, labels)
    return logp[0, len(prompt) - 1:].tolist()


def test_samples_with_raw_logprobs(engine, tiny_model_dir):
    prompt = engine.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    out = engine.generate([prompt, prompt[:5]], SamplingSpec(n=3, temperature=0.7, max_new_tokens=12, seed=1))
    assert [len(group) for group in out] == [3, 3]
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for c in out[0]:
        assert 1 <= len(c.token_ids) <= 12 and len(c.logprobs) == len(c.token_ids)
        # raw model log-probs, not temperature-scaled: equal to a plain forward pass
        assert c.logprobs == pytest.approx(_reference_logprobs(hf, prompt, c.token_ids), abs=1e-4)
        assert c.finish_reason == ("stop" if c.token_ids[-1] in engine.eos else "length")
    again = engine.generate([prompt], SamplingSpec(n=3, temperature=0.7, max_new_tokens=12, seed=1))
    assert [c.token_ids for c in again[0]] == [c.token_ids for c in out[0]]
    greedy = engine.generate([prompt], SamplingSpec(n=2, temperature=0, max_new_tokens=6))[0]
    assert greedy[0].token_ids == greedy[1].token_ids


def test_load_weights_and_fingerprint(engine, tiny_model_dir):
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    original = engine.fingerprint()
    assert original == pytest.approx(sync_fingerprint(unique_tensors(hf), 0), rel=1e-9)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    state = hf.state_dict()
    engine.load_weights((k, v) for k, v in state.items() if k != "model.layers.0.self_attn.q_proj.weight")
    assert engine.fingerprint() != pytest.approx(sync_fingerprint(unique_tensors(hf), 0), rel=1e-9)
    engine.load_weights(state.items())
    assert engine.fingerprint() == pytest.approx(sync_fingerprint(unique_tensors(hf), 0), rel=1e-9)
    assert engine.fingerprint() != pytest.approx(original, rel=1e-6)


def test_logit_bias_and_penalties_as_openai_defines_them(engine):
    """Issue 21's standard fields on the HF engine (vLLM's: test_serve.py): a +100 bias makes a token the greedy
    choice at every step; penalties act on generated tokens only, each log-prob stays the raw model's."""
    prompt = engine.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    [[forced]] = engine.generate([prompt], SamplingSpec(temperature=0, max_new_tokens=4, logit_bias=((42, 100.0),)))
    assert forced.token_ids == [42] * 4
    # raw: the engine's own model (an earlier test loaded other weights into it) without the bias
    assert forced.logprobs == pytest.approx(_reference_logprobs(engine.model, prompt, forced.token_ids), abs=1e-4)
    [[plain]] = engine.generate([prompt], SamplingSpec(temperature=0, max_new_tokens=24, logit_bias=((42, 5.0),)))
    [[fresh]] = engine.generate([prompt], SamplingSpec(temperature=0, max_new_tokens=24, logit_bias=((42, 5.0),),
                                                      frequency_penalty=2.0, presence_penalty=2.0))
    assert plain.token_ids.count(42) > 1 and fresh.token_ids.count(42) < plain.token_ids.count(42)
