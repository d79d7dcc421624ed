"""`rayalign models create-tiny` output loads in transformers and in vLLM (CPU), and both agree."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

EXE = str(Path(sys.executable).parent / "rayalign")
PROMPT = "<|im_start|>user\nHow many 'r' in 'strawberry'?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def made(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "model"
    done = subprocess.run([EXE, "models", "create-tiny", str(out), "--arch", request.param, "--layers", "2",
                           "--hidden", "128", "--vocab", "800"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"tiny {request.param} model written to {out}")
    return request.param, out


def hf_prompt_logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()


def test_files_and_transformers_load(made):
    arch, path = made
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in path.iterdir()}
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == arch and model.config.hidden_size == 128
    assert model.config.hidden_size // model.config.num_attention_heads == 64  # head_dim vLLM CPU takes
    assert len(tok) <= 800 and model.config.vocab_size == len(tok)
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    # a random init predicts close to uniform: mean NLL near log(vocab)
    nll = -sum(hf_prompt_logprobs(model, ids)) / (len(ids) - 1)
    assert abs(nll - math.log(len(tok))) < 1.0
    out = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)
    assert out.shape[1] == len(ids) + 5 or tok.eos_token_id in out[0, len(ids):].tolist()


def test_vllm_loads_it_and_matches_transformers(made):
    from vllm import LLM, SamplingParams

    _, path = made
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    expected = hf_prompt_logprobs(AutoModelForCausalLM.from_pretrained(path), ids)
    llm = LLM(model=str(path), dtype="float32", gpu_memory_utilization=0.2, max_model_len=256,
              enforce_eager=True, seed=0)
    try:
        result = llm.generate([{"prompt_token_ids": ids}],
                              SamplingParams(max_tokens=8, temperature=1.0, prompt_logprobs=0))[0]
        got = [next(iter(lp.values())).logprob for lp in result.prompt_logprobs[1:]]
        assert len(got) == len(expected)
        assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-3
        assert len(result.outputs[0].token_ids) >= 1
    finally:
        del llm
