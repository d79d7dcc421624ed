"""``rayalign infer``: batch generation over Ray rollout workers (order kept, samples independent of the
number of workers) and the terminal chat loop (replies are the engine's, the history is kept and reset)."""

import json

import pytest

from rayalign.cli import main
from rayalign.config import InferConfig, ModelConfig
from rayalign.data.collate import tokenize_prompt
from rayalign.data.tasks import generate, to_row
from rayalign.engines.base import SamplingSpec
from rayalign.engines.hf_engine import HFEngine
from rayalign.inference import interactive


def run_batch(tmp_path, model_dir, name, workers, chunk, capsys):
    with pytest.raises(SystemExit) as info:
        main(["infer", "--model", str(model_dir), "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / name),
              "--infer.engine", "hf", "--infer.num_workers", str(workers), "--infer.num_cpus", "0.5",
              "--infer.chunk_size", str(chunk), "--infer.n", "2", "--infer.temperature", "1.0",
              "--infer.max_new_tokens", "12", "--infer.seed", "3"])
    assert info.value.code == 0
    assert f"wrote {tmp_path / name}" in capsys.readouterr().out
    return [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]


def test_batch_over_workers(ray_local, tiny_model_dir, tmp_path, capsys):
    rows = [{**to_row(ex, "prompt", i), "id": i} for i, ex in enumerate(generate("arithmetic", 7, 2))]
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "id": 7})
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    two = run_batch(tmp_path, tiny_model_dir, "two.jsonl", 2, 3, capsys)
    one = run_batch(tmp_path, tiny_model_dir, "one.jsonl", 1, 8, capsys)
    assert [r["id"] for r in two] == list(range(8)) and two[0]["answer"] == rows[0]["answer"]
    assert all(len(r["responses"]) == 2 and len(r["completion_tokens"]) == 2 for r in two)
    assert [r["responses"] for r in two] == [r["responses"] for r in one]  # prompt j: seed + j * n anywhere
    assert len({tuple(r["responses"]) for r in two}) == 8


def test_bad_infer_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["infer", "--model", "m"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: infer needs exactly one of --interactive and --input FILE (with " \
                                      "--output FILE)\n"


def test_chat_loop(tiny_model_dir):
    lines = iter(["How many 'r' in 'strawberry'?", "and in 'berry'?", "/reset", "/exit", "never read"])
    out = []
    cfg = InferConfig(engine="hf", temperature=0, max_new_tokens=10)
    model = ModelConfig(name_or_path=str(tiny_model_dir))
    interactive(model, cfg, lambda prompt: next(lines), out.append)
    text = "".join(out)
    engine = HFEngine(model)
    first = [{"role": "user", "content": "How many 'r' in 'strawberry'?"}]
    spec = SamplingSpec(temperature=0, max_new_tokens=10)
    reply = engine.generate([tokenize_prompt(engine.tokenizer, first, None)], spec)[0][0].text
    second = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "and in 'berry'?"}]
    reply2 = engine.generate([tokenize_prompt(engine.tokenizer, second, None)], spec)[0][0].text
    assert text == (f"chatting with {tiny_model_dir}; /reset starts over, /exit leaves\n"
                    f"assistant> {reply}\nassistant> {reply2}\n(conversation reset)\n")
