"""A driver script on rayalign's public Python API alone: a tiny model and letter-count data, SFT, DPO from
the SFT model, both evaluated on held-out prompts, the DPO model served, one question asked through the
official ``openai`` client, the server stopped.

    python examples/driver.py --out outputs/driver                 # a local Ray, or the one RAY_ADDRESS names
    ray job submit --working-dir examples -- python driver.py --out /tmp/driver --quick     # as a Ray job

Every call joins the Ray this process runs on (started here only when there is none) and raises
``rayalign.UserError`` / ``rayalign.RunError`` on failure; nothing exits the process behind the script's back.
``--quick`` shrinks every stage to a few steps (what the tests run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import openai

import rayalign


def sft_config(model: Path, data: Path, out: Path, steps: int, workers: int) -> rayalign.RecipeConfig:
    return rayalign.RecipeConfig.model_validate({
        "trainer": "sft", "model": {"name_or_path": str(model)},
        "data": {"train": {"format": "sft", "datasets": [{"path": str(data)}], "max_length": 128}},
        "training": {"output_dir": str(out), "learning_rate": 2e-3, "warmup_steps": min(20, steps // 4),
                     "micro_batch_size": 16, "max_steps": steps, "save_steps": steps, "overwrite": True},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1 / workers, "torch_threads": 1}})


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/driver"))
    ap.add_argument("--quick", action="store_true", help="a few steps per stage (tests)")
    ap.add_argument("--port", type=int, default=8000, help="the served model's HTTP port")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    sft_steps, dpo_steps, eval_n, workers = (4, 4, 8, 1) if args.quick else (300, 60, 100, 2)

    # a model whose tokenizer reads about one token per letter, and the task's data in two formats
    model = rayalign.create_tiny_model(out / "tiny-model", vocab=300, force=True)
    sft_rows = rayalign.make_data("letter_count", out / "data" / "sft.jsonl", n=sft_steps * 16, format="sft",
                                  seed=1, force=True)
    pairs = rayalign.make_data("letter_count", out / "data" / "pairs.jsonl", n=dpo_steps * 16, format="preference",
                               seed=2, force=True)

    sft = rayalign.train(sft_config(model, sft_rows, out / "sft", sft_steps, workers))
    dpo_cfg = rayalign.with_overrides(sft_config(sft.final_model, pairs, out / "dpo", dpo_steps, workers), {
        "trainer": "dpo", "data.train.format": "preference", "training.learning_rate": 2e-4,
        "preference.beta": 0.1})
    dpo = rayalign.train(dpo_cfg)

    accuracy = {}
    for name, run in (("sft", sft), ("dpo", dpo)):
        result = rayalign.evaluate(rayalign.EvalConfig.model_validate({
            "model": {"name_or_path": str(run.final_model)}, "engine": "hf", "output_dir": str(out / "eval" / name),
            "temperature": 0.0, "tasks": [{"name": "letter_count", "kind": "generate", "task": "letter_count",
                                            "split": "test", "seed": 99, "num_samples": eval_n,
                                            "max_new_tokens": 48}]}), force=True)
        accuracy[name] = result.tasks["letter_count"]

    with rayalign.serve(model=str(dpo.final_model), overrides={
            "serve.engine": "hf", "serve.port": args.port, "serve.num_cpus": 0.5,
            "serve.served_model_name": "letter-count-dpo"}) as server:
        client = openai.OpenAI(base_url=server.url, api_key=server.api_key or "none", max_retries=0)
        reply = client.chat.completions.create(model=server.model, max_tokens=48, temperature=0, messages=[
            {"role": "user", "content": "How many times does the letter 'r' appear in 'carrot'?"}])
    answer = reply.choices[0].message.content
    print(f"SFT loss {sft.metrics.get('loss', float('nan')):.3f}, DPO loss {dpo.metrics.get('loss', float('nan')):.3f}")
    for name, metrics in accuracy.items():
        print(f"{name}: held-out accuracy {metrics['accuracy']:.1%} (best constant answer "
              f"{metrics['best_constant']:.1%})")
    print(f"served {server.model} at {server.url}; asked about 'carrot', it said: {answer!r}")
    return {"sft": sft, "dpo": dpo, "accuracy": accuracy, "answer": answer, "url": server.url}


if __name__ == "__main__":
    main()
