"""`make quickstart`'s driver runs end to end and leaves valid data, a loadable model and recipes."""

import json
import subprocess
import sys
from pathlib import Path

from rayalign.config import RecipeConfig
from rayalign.data.loading import validate_file

ROOT = Path(__file__).parents[2]


def test_quickstart_driver(tmp_path):
    out = tmp_path / "qs"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].endswith(f"outputs in {out.resolve()}")
    assert "global batch = micro_batch_size 16 x gradient_accumulation_steps 1 x scaling.num_workers 2 = 32" \
        in done.stdout
    assert "samples per step = prompts_per_step 16 x group_size 8 = 128" in done.stdout
    assert "loss on " in done.stdout and "\\\\boxed{" in done.stdout
    for name, fmt in (("letter_count_sft", "sft"), ("letter_count_prompt", "prompt"),
                      ("letter_count_preference", "preference"), ("letter_count_kto", "kto"),
                      ("letter_count_text", "text")):
        assert validate_file(str(out / "data" / f"{name}.jsonl"), fmt).ok
    sft = RecipeConfig.model_validate(json.loads((out / "sft_recipe.json").read_text()))
    assert sft.model.name_or_path == str(out / "tiny-model")
    assert (out / "tiny-model" / "model.safetensors").is_file()
