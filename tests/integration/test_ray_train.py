"""SFT / pretraining on Ray Train with 2 workers (FSDP2 over gloo), on the tiny model: the loss goes
down and outputs load, with a worker killed mid-run and recovered from the last checkpoint (ZeRO-3's case:
test_deepspeed.py); DDP with gradient accumulation trains FSDP2's model; resume is bit-for-bit; LoRA adapters
save and load with peft."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from rayalign.errors import UserError
from rayalign.metrics import read_metrics
from rayalign.checkpoint import checkpoints
from rayalign.recipes.ray_train import run
from train_helpers import WorkerKiller, build, recipe, weights


def test_sft_loss_goes_down_a_killed_worker_is_recovered_and_outputs_load(ray_local, tiny_model_dir, task_files,
                                                                         tmp_path):
    out = tmp_path / "sft"
    cfg = build(recipe(tiny_model_dir, "sft", task_files["sft"], out, eval_file=task_files["sft_eval"],
                       max_steps=12, eval_steps=6, save_steps=3, save_total_limit=1, max_failures=1))
    killer = WorkerKiller(out, after=4)  # in step 5: Ray Train restarts the ranks from checkpoint 3
    final = run(cfg)
    killer.join()
    assert killer.killed.get("pid") and killer.killed["step"] < 12, killer.killed
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 13))  # restarted steps are not listed twice
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 12
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "epoch"} <= set(rows[0])
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0  # from ~log(vocab)=6.9 on a random init
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [6, 12] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert evals[1]["eval_ppl"] == pytest.approx(torch.tensor(evals[1]["eval_loss"]).exp().item(), rel=1e-6)
    assert rows[0]["lr"] == pytest.approx(0.0) and rows[1]["lr"] == pytest.approx(1e-3)  # 1 warmup step
    assert [c.name for c in checkpoints(out)] == ["checkpoint-000012"]  # save_total_limit 1
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    model = AutoModelForCausalLM.from_pretrained(final)
    trained = weights(final)
    assert not torch.equal(trained["model.embed_tokens.weight"], weights(tiny_model_dir)["model.embed_tokens.weight"])
    assert model.config.vocab_size == trained["model.embed_tokens.weight"].shape[0]


def test_pretrain_packs_text(ray_local, tiny_model_dir, task_files, tmp_path):
    d = recipe(tiny_model_dir, "pretrain", task_files["text"], tmp_path / "pt", max_steps=3)
    d["data"]["train"]["packing"] = True
    d["data"]["train"]["max_length"] = 64
    run(build(d))
    rows = read_metrics(tmp_path / "pt")
    # packed: every sequence is a full block, so tokens per step is exactly 2 workers x 4 x 64
    assert len(rows) == 3 and rows[-1]["loss"] < rows[0]["loss"]


def test_ddp_with_gradient_accumulation_trains_the_fsdp2_model(fsdp2_sft_run, tiny_model_dir, task_files, tmp_path):
    """DDP at 1 x 4 micro batches against the FSDP2 baseline's 4 x 1: the same losses, gradient norms and weights
    (either strategy or the accumulation going wrong shows)."""
    base, base_final = fsdp2_sft_run
    out = tmp_path / "m1a4"
    final = run(build(recipe(tiny_model_dir, "sft", task_files["sft"], out, micro_batch_size=1,
                             gradient_accumulation_steps=4), scaling={"strategy": "ddp"}))
    ma, mb = read_metrics(base), read_metrics(out)
    for key in ("loss", "grad_norm"):  # a wrongly scaled accumulated gradient shows in its norm
        assert [r[key] for r in ma] == pytest.approx([r[key] for r in mb], rel=1e-4, abs=1e-5), key
    wa, wb = weights(base_final), weights(final)
    # Adam divides by sqrt(v): float noise of summation order in tiny gradients shows up to ~2e-5 per step
    # at lr 1e-3; a wrong accumulation would be off by the whole update (~1e-3). DDP's save leaves out the tied
    # lm_head.weight that FSDP2's full state dict holds (both load the same model)
    assert set(wb) == set(wa) - {"lm_head.weight"}
    assert max((wa[k] - wb[k]).abs().max().item() for k in wb) < 1e-4


def test_resume_is_bit_for_bit(fsdp2_sft_run, tiny_model_dir, task_files, tmp_path):
    straight_out, straight = fsdp2_sft_run
    d = recipe(tiny_model_dir, "sft", task_files["sft"], tmp_path / "b", max_steps=4, stop_after_steps=3,
               save_steps=1, save_total_limit=None)
    assert run(build(d)) is None  # stopped at step 3 with a checkpoint after every step
    ckpts = checkpoints(tmp_path / "b")
    assert [c.name for c in ckpts] == ["checkpoint-000001", "checkpoint-000002", "checkpoint-000003"]
    with pytest.raises(UserError, match="already holds checkpoints of a run.*--resume"):
        run(build(d))
    # the newest is deleted by hand (Ray Train's own record still names it) and the next one is torn
    shutil.rmtree(ckpts[2])
    with open(ckpts[1] / "optimizer.pt", "r+b") as f:
        f.truncate(100)
    said = []
    resumed = run(build(d, training={"resume": "auto", "stop_after_steps": None}), echo=said.append)
    assert said[0].startswith("ignoring checkpoint-000002: optimizer.pt is 100 bytes")
    assert said[1] == "sft: 96 train rows, 4 steps, resuming after step 1"
    wa, wb = weights(straight), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert read_metrics(straight_out) == [
        {**r, "tokens_per_s": pytest.approx(r["tokens_per_s"], rel=10), "step_time_s": pytest.approx(
            r["step_time_s"], rel=10)} for r in read_metrics(tmp_path / "b")]
    with pytest.raises(UserError, match="already finished 4 steps; raise max_steps"):
        run(build(d, training={"resume": "auto", "stop_after_steps": None}))


def test_lora_adapter_saved_and_loadable_with_peft(ray_local, tiny_model_dir, task_files, tmp_path):
    from peft import PeftModel

    out = tmp_path / "lora"
    cfg = build(recipe(tiny_model_dir, "sft", task_files["sft"], out, max_steps=3, learning_rate=1e-2),
                model={"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}})
    final = run(cfg)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in final.iterdir()}
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), final)
    b_weights = [p for n, p in lora.named_parameters() if "lora_B" in n]
    assert b_weights and any(p.abs().sum() > 0 for p in b_weights)  # B starts at zero; it trained
    merged = AutoModelForCausalLM.from_pretrained(final / "merged")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(lora(ids).logits, merged(ids).logits, atol=1e-4)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        assert not torch.allclose(base(ids).logits, merged(ids).logits, atol=1e-4)


@pytest.mark.parametrize("trainer", ["sft", "dpo"])
def test_too_few_cpus_is_reported_before_training(ray_local, tiny_model_dir, task_files, tmp_path, monkeypatch,
                                                  trainer):
    from rayalign.recipes import dpo

    def expensive(*args, **kwargs):
        raise AssertionError("the DPO reference pass ran before the resource check")

    monkeypatch.setattr(dpo, "score_reference", expensive)
    cfg = build(recipe(tiny_model_dir, trainer, task_files["sft" if trainer == "sft" else "preference"],
                       tmp_path / "big", micro_batch_size=2), scaling={"num_workers": 3, "cpus_per_worker": 1})
    with pytest.raises(UserError, match=r"scaling: Ray Train workers need 3 x 1.0 CPUs = 3.0 but the Ray "
                                        r"cluster has 2"):
        run(cfg)
    assert not (tmp_path / "big").exists()
