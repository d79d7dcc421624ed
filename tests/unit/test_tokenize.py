"""Tokeniser round trips, assistant-only masks, packing (on the tiny model's real tokenizer)."""

from rayalign.data.tasks import generate
from rayalign.data.tokenize import IGNORE, pack, tokenize_conversation, tokenize_text


def learned_text(tok, enc):
    return tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE])


def test_round_trip(tiny_tokenizer):
    texts = [ex.prompt + " " + ex.solution for task in ("letter_count", "countdown") for ex in generate(task, 20)]
    texts += ["Ünïcödé → 你好 🙂 tabs\tand\nnewlines", "  leading spaces"]
    for text in texts:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tiny_tokenizer.decode(ids) == text
    # task text compresses: BPE learned merges on it
    assert len(tiny_tokenizer("How many 'r' in 'strawberry'?")["input_ids"]) < 12


def test_special_tokens(tiny_tokenizer):
    assert tiny_tokenizer.eos_token == "<|im_end|>" and tiny_tokenizer.pad_token == "<|endoftext|>"
    ids = tiny_tokenizer("<|im_start|>user", add_special_tokens=False)["input_ids"]
    assert ids[0] == tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_assistant_only_mask_single_and_multi_turn(tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "4. \\boxed{4}"},
                {"role": "user", "content": "And 3 + 3?"},
                {"role": "assistant", "content": "\\boxed{6}"}]
    enc = tokenize_conversation(tiny_tokenizer, messages[:3], max_length=512)
    assert learned_text(tiny_tokenizer, enc) == "4. \\boxed{4}<|im_end|>"
    assert len(enc["input_ids"]) == len(enc["labels"])
    enc = tokenize_conversation(tiny_tokenizer, messages, max_length=512)
    assert learned_text(tiny_tokenizer, enc) == "4. \\boxed{4}<|im_end|>\\boxed{6}<|im_end|>"
    assert tiny_tokenizer.decode(enc["input_ids"]).count("What is 2 + 2?") == 1
    short = tokenize_conversation(tiny_tokenizer, messages, max_length=10)
    assert len(short["input_ids"]) == len(short["labels"]) == 10


def test_text_and_packing(tiny_tokenizer):
    docs = [tokenize_text(tiny_tokenizer, ex.prompt + " " + ex.solution) for ex in generate("arithmetic", 40)]
    assert all(d["input_ids"][-1] == tiny_tokenizer.eos_token_id for d in docs)
    blocks = list(pack(docs, max_length=64))
    total = sum(len(d["input_ids"]) for d in docs)
    assert len(blocks) == total // 64
    flat = [t for d in docs for t in d["input_ids"]]
    assert [t for b in blocks for t in b["input_ids"]] == flat[: len(blocks) * 64]
    for b in blocks:
        assert len(b["input_ids"]) == len(b["labels"]) == len(b["position_ids"]) == 64
    # positions restart at each document: a 0 follows every EOS inside a block
    first = blocks[0]
    for i, tok in enumerate(first["input_ids"][:-1]):
        if tok == tiny_tokenizer.eos_token_id:
            assert first["position_ids"][i + 1] == 0
    assert first["position_ids"][0] == 0
