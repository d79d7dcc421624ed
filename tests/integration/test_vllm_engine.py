"""The batch vLLM engine on the tiny model, one engine for the module (~12 s to start): n samples per prompt
whose log-probs are the raw model's (transformers recomputes them), seeds, weight loading checked by
the fingerprint, a partial sync caught by ``check_sync``, and stopping at EOS ids and stop strings."""

import copy
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from rayalign.config import ModelConfig
from rayalign.engines.base import SamplingSpec, check_sync, sync_fingerprint
from rayalign.engines.build import build_engine
from rayalign.engines.vllm_engine import VLLMEngine
from rayalign.engines.vllm_serving import AsyncVLLMEngine

PROMPT = "<|im_start|>user\nHow many 'r' in 'strawberry'?<|im_end|>\n<|im_start|>assistant\n"
# longer than vLLM CPU's 128-token KV block, so a prefix cache kept across a weight load would show
LONG_PROMPT = "<|im_start|>user\n" + "Spell the word strawberry backwards, then count. " * 8 + "<|im_end|>\n"
TOL = 1e-3


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = VLLMEngine(ModelConfig(name_or_path=str(tiny_model_dir)), max_model_len=512)
    yield engine
    engine.close()  # before the next module starts its own engine
    assert not torch.distributed.is_initialized()  # the last engine out took down vLLM's one-rank group


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def reference(model, prompt, tokens):
    """transformers' log-probs of every vocabulary entry at each completion position: [T, V]."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits, dim=-1)


def max_logprob_diff(model, prompt, completion):
    tokens = completion.token_ids
    expected = reference(model, prompt, tokens)[torch.arange(len(tokens)), tokens]
    return (torch.tensor(completion.logprobs) - expected).abs().max().item()


def learner_fingerprint(model, version=0):
    """What the learner computes: each distinct tensor once (lm_head is embed_tokens, tied)."""
    return sync_fingerprint({p.data_ptr(): p for p in model.parameters()}.values(), version)


def perturbed(model, seed, scale=0.02):
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def test_samples_with_raw_logprobs(engine, hf, tiny_tokenizer):
    prompts = [ids(tiny_tokenizer, PROMPT), ids(tiny_tokenizer, PROMPT)[:5]]
    stop_ids = set(hf.generation_config.eos_token_id)
    for temperature in (1.0, 0.7):  # raw log-probs: the same numbers whatever the temperature
        spec = SamplingSpec(n=3, temperature=temperature, max_new_tokens=12, seed=1)
        out = engine.generate(prompts, spec)
        assert [len(group) for group in out] == [3, 3]
        for prompt, group in zip(prompts, out):
            assert len({tuple(c.token_ids) for c in group}) > 1  # each of the n draws its own tokens
            for c in group:
                assert 1 <= len(c.token_ids) <= 12 and len(c.logprobs) == len(c.token_ids)
                assert max_logprob_diff(hf, prompt, c) < TOL
                assert c.finish_reason == ("stop" if c.token_ids[-1] in stop_ids else "length")
        again = engine.generate(prompts, spec)
        assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in out]


def test_load_weights_moves_engine_to_learner(engine, hf, tiny_tokenizer):
    prompts = [ids(tiny_tokenizer, LONG_PROMPT), ids(tiny_tokenizer, PROMPT)]
    greedy = SamplingSpec(n=2, temperature=0, max_new_tokens=8)
    engine.generate(prompts, greedy)  # fills the prefix cache with the old weights' KV
    original = engine.fingerprint()
    check_sync(original, learner_fingerprint(hf))

    learner = perturbed(hf, seed=0)
    engine.load_weights(learner.state_dict().items())
    check_sync(engine.fingerprint(), learner_fingerprint(learner))
    with pytest.raises(RuntimeError, match="weight sync check failed"):
        check_sync(engine.fingerprint(), original)
    for prompt, (first, second) in zip(prompts, engine.generate(prompts, greedy)):
        assert first.token_ids == second.token_ids
        assert max_logprob_diff(learner, prompt, first) < TOL
        ref = reference(learner, prompt, first.token_ids)
        # greedy picked the learner's argmax (up to near-ties between the two implementations)
        assert all(ref[t].max() - ref[t, tok] < TOL for t, tok in enumerate(first.token_ids))


def test_partial_sync_is_caught(engine, hf):
    learner = perturbed(hf, seed=1)
    state, expected = learner.state_dict(), learner_fingerprint(learner)
    # down_proj alone in its layer: vLLM keeps the old matrix (and only logs a warning). q_proj is
    # fused into qkv_proj: vLLM rebuilds the fused matrix with the q rows uninitialised memory. The tied
    # lm_head: the embedding table is new but the LM head's packed matmul copy stays old.
    for missing in ("model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight",
                    "lm_head.weight"):
        engine.load_weights(hf.state_dict().items())  # from the original weights each time
        engine.load_weights((name, t) for name, t in state.items() if name != missing)
        with pytest.raises(RuntimeError, match="weight sync check failed"):
            check_sync(engine.fingerprint(), expected)
    engine.load_weights(state.items())
    check_sync(engine.fingerprint(), expected)


def test_fingerprint_probes_a_moving_block_of_columns(engine, hf):
    """Each sync reads 64 of a matrix's input columns back from the engine's kernels, the next 64 at
    the next version: a stale column outside this sync's block is caught by a later one."""
    learner = copy.deepcopy(hf)
    with torch.no_grad():  # hidden 128: version 0 reads columns 0-63, version 1 columns 64-127
        learner.model.layers[1].mlp.gate_proj.weight[:, 100] += 0.5
    engine.load_weights(hf.state_dict().items())
    check_sync(engine.fingerprint(0), learner_fingerprint(learner, 0))  # column 100 is not in block 0
    with pytest.raises(RuntimeError, match="weight sync check failed"):
        check_sync(engine.fingerprint(1), learner_fingerprint(learner, 1))
    engine.load_weights(learner.state_dict().items())
    for version in (0, 1, 2, 7):
        check_sync(engine.fingerprint(version), learner_fingerprint(learner, version))
    engine.load_weights(hf.state_dict().items())


def test_stops_at_eos_ids_and_stop_strings(engine, hf, tiny_tokenizer):
    prompt = ids(tiny_tokenizer, "<|im_start|>user\nHow many 'r' in 'strawberry'?")  # no stop id inside
    state = dict(hf.state_dict())
    engine.load_weights(state.items())
    greedy = SamplingSpec(temperature=0, max_new_tokens=12)
    first = engine.generate([prompt], greedy)[0][0].token_ids[0]
    # stop ids: the tokenizer's EOS (<|im_end|>) and generation_config's other eos id (<|endoftext|>).
    assert tiny_tokenizer.pad_token_id in hf.generation_config.eos_token_id
    # Scaling the first greedy token's embedding row 10x into the stop id's row (tied: also the output
    # row) makes that id the argmax at step one; the prompt does not contain it, so nothing else moves.
    for stop_id in (tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id):
        embed = state["model.embed_tokens.weight"].clone()
        embed[stop_id] = 10 * embed[first]
        engine.load_weights({**state, "model.embed_tokens.weight": embed, "lm_head.weight": embed}.items())
        c = engine.generate([prompt], greedy)[0][0]
        assert (c.token_ids, c.finish_reason) == ([stop_id], "stop")
    engine.load_weights(state.items())
    # a stop string: the first 2 printable characters of a seeded sample that do not occur earlier in
    # it (sampled, as greedy text here repeats one token); the same seed then stops right before them
    free = engine.generate([prompt], SamplingSpec(temperature=1.0, max_new_tokens=16, seed=3))[0][0]
    assert free.finish_reason == "length"
    text = free.text
    cut = next(i for i in range(1, len(text) - 1)
               if text[i:i + 2].isprintable() and text[i:i + 2] not in text[:i + 1])
    c = engine.generate([prompt], SamplingSpec(temperature=1.0, max_new_tokens=16, seed=3,
                                               stop=(text[cut:cut + 2],)))[0][0]
    assert (c.text, c.finish_reason) == (text[:cut], "stop") and len(c.token_ids) < 16


def test_concurrent_seeded_requests_past_the_token_budget(engine):
    """The quickstart's crash (issue 11): seeded requests whose prompts together exceed the scheduler's
    per-step token budget (2048 on CPU) made vLLM split a prefill, then rewind the seeded CPU generator
    ("CPU Generator does not use offset") and kill the engine core. 64 distinct 200-token prompts, all
    submitted at once; seeds stay per request: a prompt sampled alone gives the same tokens."""
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 1000, (200,), generator=gen).tolist() for _ in range(64)]
    spec = SamplingSpec(n=2, temperature=1.0, max_new_tokens=8, seed=11)
    out = engine.generate(prompts, spec)
    assert [len(g) for g in out] == [2] * 64 and all(len(c.token_ids) >= 1 for g in out for c in g)
    for j in (0, 37, 63):  # prompt j samples with seed + j * n whatever else is in the batch
        alone = engine.generate([prompts[j]], SamplingSpec(n=2, temperature=1.0, max_new_tokens=8, seed=11 + 2 * j))
        assert [c.token_ids for c in alone[0]] == [c.token_ids for c in out[j]]


def test_engine_runs_in_this_process_and_leaves_it_as_it_was(engine, tiny_model_dir):
    """The batch engine: no process of its own (vLLM's core and worker live here); the settings its start
    needs (multiprocessing off, vLLM's no-op ``torch.set_num_threads``) are not left behind; a second
    engine opened beside it (``evaluate`` with a baseline) gets a process of its own, since vLLM's
    distributed state is per process."""
    import os

    import psutil
    import torch.distributed as dist

    from rayalign.engines.vllm_engine import MULTIPROCESSING

    # no vLLM process of ours (vLLM titles its engine core VLLM::EngineCore). Only live direct children count:
    # Ray's processes, under its raylet, may hold other modules' engines, and an earlier module's closed serving
    # engine may have left its exited core unreaped (a zombie, shown by its 15-character kernel name)
    assert [p.name() for p in psutil.Process().children()
            if p.name().startswith("VLLM") and p.status() != psutil.STATUS_ZOMBIE] == []
    assert type(engine.llm.llm_engine.engine_core).__name__ == "InprocClient"
    assert os.environ.get(MULTIPROCESSING) != "0"
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    assert torch.get_num_threads() == threads + 1  # the real setter, not vLLM's
    torch.set_num_threads(threads)

    greedy = SamplingSpec(n=1, temperature=0.0, max_new_tokens=6)
    before = engine.generate([[5, 6, 7, 8]], greedy)[0][0].token_ids
    with pytest.raises(RuntimeError, match="one in-process vLLM engine per process"):
        VLLMEngine(ModelConfig(name_or_path=str(tiny_model_dir)), max_model_len=128)
    second = build_engine("vllm", ModelConfig(name_or_path=str(tiny_model_dir)), max_model_len=128)
    assert isinstance(second, AsyncVLLMEngine)  # beside it, in a process of its own
    assert second.generate([[5, 6, 7, 8]], greedy)[0][0].token_ids == before  # the same weights
    second.close()
    assert engine.generate([[5, 6, 7, 8]], greedy)[0][0].token_ids == before  # the first one unharmed
    assert dist.is_initialized()


def test_failure_while_generating_retires_the_engine(engine, monkeypatch):
    """Last in the module: it retires the module's engine. An exception inside vLLM's step leaves
    requests in the engine: it becomes EngineDied with the cause in one line, then and on every later
    call; ``close`` (the fixture's) still frees it."""
    from vllm.v1.engine.llm_engine import LLMEngine

    from rayalign.engines.base import EngineDied

    with pytest.raises(Exception, match="maximum context length is 512"):  # refused first: engine unharmed
        engine.generate([list(range(5, 700))], SamplingSpec(max_new_tokens=4))
    engine.check_health()
    assert len(engine.generate([[5, 6, 7]], SamplingSpec(max_new_tokens=4))[0][0].token_ids) == 4

    def boom(self):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(LLMEngine, "step", boom)
    with pytest.raises(EngineDied) as died:
        engine.generate([[5, 6, 7]], SamplingSpec(max_new_tokens=4))
    monkeypatch.undo()
    assert re.fullmatch(r"vLLM engine failed while generating: RuntimeError: kernel exploded "
                        r"\(/.*/test_vllm_engine\.py:\d+, in boom\)", str(died.value)), str(died.value)
    with pytest.raises(EngineDied, match="kernel exploded"):
        engine.check_health()
    with pytest.raises(EngineDied, match="kernel exploded"):
        engine.generate([[5, 6, 7]], SamplingSpec(max_new_tokens=4))
