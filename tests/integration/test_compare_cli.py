"""`rayalign compare` and `rayalign data pairs` as a user runs them, on the tiny model (HF engine: no Ray)."""

import json
import subprocess
import sys

from rayalign.data.tasks import generate, to_row


def rayalign(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "rayalign.cli", *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=300)


def test_compare_fixed_prompts_file_and_interactive(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(to_row(ex, "prompt")) + "\n" for ex in generate("letter_count", 3, 5)))
    out = tmp_path / "side.jsonl"
    done = rayalign("compare", f"a={tiny_model_dir}", f"b={tiny_model_dir}", "--prompts", prompts, "--engine", "hf",
                    "--max-new-tokens", "8", "--output", out)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and all(list(r["answers"]) == ["a", "b"] for r in records)
    assert all(r["answers"]["a"]["text"] == r["answers"]["b"]["text"] for r in records)  # same model, greedy
    lines = done.stdout.splitlines()
    first = json.loads(prompts.read_text().splitlines()[0])
    assert lines[0] == f"[1] {first['prompt'][0]['content']}   (answer: {first['answer']})"
    assert lines[1].startswith("  a  ") and lines[2].startswith("  b  ")
    assert "mean reward over 3 prompts: a 0.00, b 0.00" in done.stdout  # an untrained model never boxes

    chat = rayalign("compare", tiny_model_dir, f"other={tiny_model_dir}", "--interactive", "--engine", "hf",
                    "--max-new-tokens", "4", stdin="How many 'a' in 'banana'?\n/exit\n")
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert "[1] How many 'a' in 'banana'?" in chat.stdout and "\n  other  " in chat.stdout
    assert "mean reward" not in chat.stdout  # typed prompts have no answer to score


def test_compare_and_pairs_refuse_bad_input_in_one_line(tiny_model_dir, tmp_path):
    one = rayalign("compare", tiny_model_dir, "--engine", "hf")
    assert (one.returncode, one.stderr) == (2, "error: --models: give two or more models to compare\n")
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"prompt": "p", "answer": "1", "responses": ["\\boxed{1}", "\\boxed{2}"]}) + "\n"
                       + json.dumps({"prompt": "q", "answer": "1", "response": "\\boxed{1}"}) + "\n")
    bad = rayalign("data", "pairs", samples, "--out", tmp_path / "pairs.jsonl")
    assert bad.returncode == 2 and bad.stderr.startswith(f"error: {samples}:2: field 'responses'")
    samples.write_text(samples.read_text().splitlines()[0] + "\n")
    good = rayalign("data", "pairs", samples, "--out", tmp_path / "pairs.jsonl")
    assert good.stdout.startswith("1 pairs from 1 prompts (0 had answers that all scored the same)")
    assert json.loads((tmp_path / "pairs.jsonl").read_text())["chosen"] == "\\boxed{1}"
