"""rayalign SFT and DPO vs TRL's SFTTrainer / DPOTrainer on the same tiny model, data, batch and steps.

    .venv/bin/python benchmarks/train_vs_trl.py [--steps 30] [--out benchmarks/results/train_vs_trl.json]
    python benchmarks/train_vs_trl.py --gpu --out benchmarks/results/train_gpu.json   # rayalign, 1 GPU worker

Throughput = mean non-padding tokens per sequence x global batch / median step time (steps after the
first 3, so model load, Ray start-up and the reference pass are excluded for both). Configurations:
rayalign 1 Ray Train worker x 2 torch threads vs TRL with 2 threads (equal threads), and rayalign
2 workers x 1 thread, FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3 (over gloo: on 2 cores it shows the communication
overhead), with each 2-worker run's peak resident memory per worker process (psutil, sampled every 0.2 s). ``--gpu``: only
rayalign, one Ray Train worker on one GPU (nccl), same model, data and batch (TRL is not timed there).
TRL's DPO runs with precompute_ref_log_probs=True, like rayalign's default, so neither pays a
reference forward per step. Run by hand; results go to the README.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rayalign.config import RecipeConfig  # noqa: E402
from rayalign.data.tasks import generate, to_row  # noqa: E402

BATCH, MAX_LEN, SKIP = 8, 128, 3


def make_inputs(root: Path) -> dict:
    from rayalign.models.tiny import create_tiny

    model = create_tiny(root / "model", hidden=256, layers=4)
    files = {}
    for fmt, seed in (("sft", 1), ("preference", 4)):
        path = root / f"{fmt}.jsonl"
        path.write_text("".join(json.dumps(to_row(e, fmt)) + "\n" for e in generate("letter_count", 2000, seed)))
        files[fmt] = path
    return {"model": model, **files}


class _PeakRSS:
    """Peak resident memory of each Ray Train worker process (MiB by pid), sampled every 0.2 s."""

    def __init__(self):
        import threading

        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        import psutil

        while not self._stop.wait(0.2):
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                if "RayTrainWorker" in " ".join(p.info["cmdline"] or []) and p.info["memory_info"]:
                    self.peaks[p.pid] = max(self.peaks.get(p.pid, 0.0), p.info["memory_info"].rss / 2**20)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peaks.values(), default=0.0)


def rayalign_run(inputs, trainer, steps, workers, threads, out, use_gpu=False, strategy="fsdp",
                 zero_stage=2, memory: dict | None = None) -> float:
    from rayalign.metrics import read_metrics
    from rayalign.recipes.ray_train import run

    fmt = "sft" if trainer == "sft" else "preference"
    cfg = RecipeConfig.model_validate({
        "trainer": trainer, "model": {"name_or_path": str(inputs["model"])},
        "data": {"train": {"format": fmt, "datasets": [{"path": str(inputs[fmt])}], "max_length": MAX_LEN}},
        "training": {"output_dir": str(out), "learning_rate": 1e-4, "micro_batch_size": BATCH // workers,
                     "max_steps": steps, "save_steps": 10_000},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1, "torch_threads": threads, "use_gpu": use_gpu,
                    "strategy": strategy, **({"deepspeed": {"zero_stage": zero_stage}} if strategy == "deepspeed"
                                             else {})}})
    rss = _PeakRSS()
    run(cfg, echo=lambda *_: None)
    if memory is not None:
        memory[out.name] = rss.stop()
    rows = read_metrics(out)[SKIP:]
    return statistics.median(r["step_time_s"] for r in rows)


class _StepTimer:
    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.times.append(time.perf_counter() - timer.t)
        self.times, self.callback = [], CB()

    def median(self) -> float:
        return statistics.median(self.times[SKIP:])


def trl_run(inputs, trainer, steps, out) -> float:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(inputs["model"])
    model = AutoModelForCausalLM.from_pretrained(inputs["model"])
    timer = _StepTimer()
    common = dict(output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=1e-4,
                  report_to=[], save_strategy="no", logging_steps=10_000, use_cpu=True, dataloader_num_workers=0,
                  max_length=MAX_LEN, bf16=False)  # fp32 as rayalign; TRL >= 1 defaults to bf16 autocast, ~30x slower on this CPU
    if trainer == "sft":
        from trl import SFTConfig, SFTTrainer

        ds = load_dataset("json", data_files=str(inputs["sft"]), split="train")
        t = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=ds, processing_class=tok,
                       callbacks=[timer.callback])
    else:
        from trl import DPOConfig, DPOTrainer

        ds = load_dataset("json", data_files=str(inputs["preference"]), split="train")
        t = DPOTrainer(model=model, args=DPOConfig(**common, beta=0.1, precompute_ref_log_probs=True),
                       train_dataset=ds, processing_class=tok, callbacks=[timer.callback])
    t.train()
    return timer.median()


def tokens_per_batch(inputs, trainer) -> float:
    """Mean non-padding tokens per optimizer step (the same data for both frameworks)."""
    from transformers import AutoTokenizer

    from rayalign.data.collate import tokenize_preference
    from rayalign.data.tokenize import tokenize_conversation

    tok = AutoTokenizer.from_pretrained(inputs["model"])
    rows = [json.loads(line) for line in Path(inputs["sft" if trainer == "sft" else "preference"]).read_text().splitlines()[:200]]
    if trainer == "sft":
        lens = [len(tokenize_conversation(tok, r["messages"], MAX_LEN)["input_ids"]) for r in rows]
    else:
        sides = [tokenize_preference(tok, r, MAX_LEN) for r in rows]  # also holds the "truncated" flag
        lens = [sum(len(p) + len(c) for p, c in (t["chosen"], t["rejected"])) for t in sides]
    return statistics.mean(lens) * BATCH


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/train_vs_trl.json")
    ap.add_argument("--gpu", action="store_true", help="rayalign alone, 1 worker on 1 GPU")
    ap.add_argument("--trainers", default="sft,dpo", help="with --gpu: which to time")
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=2, num_gpus=1 if args.gpu else 0, include_dashboard=False, log_to_driver=False)
    if args.gpu:
        return gpu_only(args)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = make_inputs(root)
        for trainer in ("sft", "dpo"):
            tokens, memory = tokens_per_batch(inputs, trainer), {}
            times = {
                "trl_2threads": trl_run(inputs, trainer, args.steps, root / f"trl_{trainer}"),
                "rayalign_1x2": rayalign_run(inputs, trainer, args.steps, 1, 2, root / f"ra1_{trainer}"),
                "rayalign_2x1": rayalign_run(inputs, trainer, args.steps, 2, 1, root / f"ra2_{trainer}",
                                             memory=memory),
                "rayalign_2x1_zero2": rayalign_run(inputs, trainer, args.steps, 2, 1, root / f"ra2_{trainer}_zero2",
                                                   strategy="deepspeed", zero_stage=2, memory=memory),
                "rayalign_2x1_zero3": rayalign_run(inputs, trainer, args.steps, 2, 1, root / f"ra2_{trainer}_zero3",
                                                   strategy="deepspeed", zero_stage=3, memory=memory),
            }
            tps = {k: tokens / v for k, v in times.items()}
            results[trainer] = {"tokens_per_s": tps, "median_step_s": times, "peak_rss_mib_per_rank": dict(memory),
                                "ratio_1x2_vs_trl": tps["rayalign_1x2"] / tps["trl_2threads"],
                                "ratio_2x1_vs_trl": tps["rayalign_2x1"] / tps["trl_2threads"]}
            print(f"{trainer}: " + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in tps.items())
                  + f"; rayalign 1x2 / TRL = {results[trainer]['ratio_1x2_vs_trl']:.2f}x, "
                    f"2x1 / TRL = {results[trainer]['ratio_2x1_vs_trl']:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


def gpu_only(args) -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = make_inputs(root)
        for trainer in args.trainers.split(","):
            step_s = rayalign_run(inputs, trainer, args.steps, 1, 2, root / f"gpu_{trainer}", use_gpu=True)
            results[trainer] = {"tokens_per_s": tokens_per_batch(inputs, trainer) / step_s, "median_step_s": step_s}
            print(f"{trainer}: rayalign 1 GPU worker {results[trainer]['tokens_per_s']:,.0f} tok/s "
                  f"(median step {step_s * 1000:.1f} ms)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(0), **results}, indent=2))


if __name__ == "__main__":
    main()
