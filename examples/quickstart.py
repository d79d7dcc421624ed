"""The data and model half of the main job: ``python examples/quickstart.py --out outputs/quickstart``
(``make quickstart`` runs ``letter_count_pipeline.py``, which starts with this and then trains).

Uses the Python API end to end on what this machine can make offline:
1. a tiny Qwen2 model with a task-trained tokenizer (``rayalign models create-tiny``),
2. letter-count data in every format the trainers take (``rayalign data make``),
3. validation of each file (``rayalign data validate``),
4. the resolved SFT and GRPO recipes with their batch arithmetic (``rayalign config explain``),
5. one SFT row tokenised with its assistant-only loss mask.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rayalign.config_io import explain, load_config
from rayalign.data.loading import validate_file
from rayalign.data.tasks import generate, to_row

RECIPES = Path(__file__).resolve().parent.parent / "configs" / "recipes" / "tiny"
DATA = {  # file stem -> (format, rows, seed); eval rows use a different seed from train rows
    "letter_count_text": ("text", 2000, 0),
    "letter_count_sft": ("sft", 2000, 1),
    "letter_count_sft_eval": ("sft", 200, 2),
    "letter_count_prompt": ("prompt", 2000, 3),
    "letter_count_preference": ("preference", 1000, 4),
    "letter_count_kto": ("kto", 1000, 5),
}


def write_task_file(out: Path, stem: str, fmt: str, n: int, seed: int) -> Path:
    """``rayalign data make letter_count`` + ``data validate``: ``OUT/data/STEM.jsonl``."""
    path = out / "data" / f"{stem}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, ex in enumerate(generate("letter_count", n, seed)):
            f.write(json.dumps(to_row(ex, fmt, i)) + "\n")
    report = validate_file(str(path), fmt)
    assert report.ok, report.bad
    print(f"  {path}: {report.rows} rows, valid '{fmt}'")
    return path


def make_data(out: Path) -> dict[str, Path]:
    return {stem: write_task_file(out, stem, fmt, n, seed) for stem, (fmt, n, seed) in DATA.items()}


def show_mask(model_dir: Path, sft_file: Path) -> None:
    from transformers import AutoTokenizer

    from rayalign.data.tokenize import IGNORE, tokenize_conversation

    tok = AutoTokenizer.from_pretrained(model_dir)
    row = json.loads(sft_file.read_text().splitlines()[0])
    enc = tokenize_conversation(tok, row["messages"], max_length=128)
    learned = tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE])
    print(f"  {len(enc['input_ids'])} tokens: {tok.decode(enc['input_ids'])!r}")
    print(f"  loss on {sum(lab != IGNORE for lab in enc['labels'])} assistant tokens: {learned!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/quickstart", help="where everything is written")
    out = Path(parser.parse_args().out)
    start = time.time()

    from rayalign.models.tiny import create_tiny

    print("[1/5] tiny model")
    model_dir = create_tiny(out / "tiny-model", vocab=300)  # about one token per letter: counting needs letters
    print(f"  {model_dir}")
    print("[2/5] data + [3/5] validation")
    paths = make_data(out)
    print("[4/5] recipes")
    sft = load_config(RECIPES / "sft.yaml", [
        "--model.name_or_path", str(model_dir),
        "--data.train.datasets[0].path", str(paths["letter_count_sft"]),
        "--data.eval.datasets[0].path", str(paths["letter_count_sft_eval"]),
        "--training.output_dir", str(out / "sft"),
    ])
    print(explain(sft))
    grpo = load_config(RECIPES / "grpo.yaml", [
        "--model.name_or_path", str(out / "sft" / "final"),
        "--data.train.datasets[0].path", str(paths["letter_count_prompt"]),
        "--training.output_dir", str(out / "grpo"),
    ])
    print("\n".join(["  " + line for line in explain(grpo).split("# derived")[1].strip().splitlines()]))
    (out / "sft_recipe.json").write_text(sft.model_dump_json(indent=2))
    (out / "grpo_recipe.json").write_text(grpo.model_dump_json(indent=2))
    print("[5/5] assistant-only loss mask")
    show_mask(model_dir, paths["letter_count_sft"])
    print(f"done in {time.time() - start:.0f}s; outputs in {out.resolve()}")


if __name__ == "__main__":
    main()
