"""`make quickstart`'s pipeline at a reduced size, through every real stage: SFT and DPO on Ray Train, the
SFT model's own answers sampled by vLLM workers and ranked into pairs, GRPO on Ray roles with vLLM, held-out
evaluation of all four models, the side-by-side comparison, the table and the pictures."""

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "examples"))


def test_pipeline_stages_table_pictures_and_compare(ray_local, tmp_path, capsys):
    from letter_count_pipeline import main

    out = tmp_path / "qs"
    report = main(["--out", str(out), "--sft-steps", "150", "--dpo-prompts", "48", "--grpo-steps", "3",
                   "--held-out", "16"])
    printed = capsys.readouterr().out
    held_out = report["held_out"]
    assert list(held_out) == ["base", "sft", "dpo", "grpo"]
    for stage, r in held_out.items():
        assert r["n"] == 16 and 0 <= r["accuracy"] <= 1 and 0 <= r["sampled_accuracy"] <= 1, stage
        assert set(r["accuracy_by_answer"]) <= {"0", "1", "2", "3"}
        assert r["best_constant"] == held_out["sft"]["best_constant"] <= 0.5  # counts are spread evenly
    assert held_out["base"]["format_rate"] < held_out["sft"]["format_rate"]  # SFT teaches \boxed{}
    assert report["dpo_pairs"]["prompts"] == 48 and report["dpo_pairs"]["pairs"] > 0
    pairs = [json.loads(line) for line in (out / "data" / "letter_count_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == report["dpo_pairs"]["pairs"]
    assert all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    assert [m["step"] for m in map(json.loads, (out / "grpo" / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]
    table = (out / "results.md").read_text()
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "%" in line] == \
        ["| base", "| sft", "| dpo", "| grpo"]
    assert table in printed + "\n"
    for name in ("grpo_reward.png", "dpo_curves.png", "results.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 400 and image.size[1] > 200
    records = [json.loads(line) for line in (out / "compare.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(list(r["answers"]) == ["sft", "dpo", "grpo"] for r in records)
    assert all(a["reward"] in (0.0, 1.0) for r in records for a in r["answers"].values())
    assert "mean reward over 8 prompts: sft " in printed
    with pytest.raises(SystemExit, match="holds an earlier run; pass --overwrite"):
        main(["--out", str(out)])  # a finished run is not replaced without asking
    assert (out / "report.json").is_file()
