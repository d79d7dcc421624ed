"""Issue 20, `rayalign train` side of the bad-input table: each case is refused in one ``error:`` line with
exit 2 that names the key or file, before Ray starts (starting it fails the test), and every file that was
there before is byte-for-byte unchanged: an earlier run is never replaced or mixed into."""

import fcntl
import hashlib
import json

import pytest
import yaml

from rayalign.checkpoint import TrainerState, run_identity, save_training_state, write_manifest
from rayalign.cli import main
from rayalign.config import ModelConfig


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", refuse)


def checkpoint(out, step, model_dir, **changed):
    import torch

    path = out / "checkpoints" / f"checkpoint-{step:06d}"
    (path / "model").mkdir(parents=True)
    (path / "model" / "model.safetensors").write_bytes(b"w" * 64)
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    torch.save(opt.state_dict(), path / "optimizer.pt")
    save_training_state(path, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                        TrainerState(step=step))
    run = run_identity("sft", ModelConfig(name_or_path=str(model_dir)), "Qwen2ForCausalLM")
    write_manifest(path, TrainerState(step=step), {**run, **changed})


def finished(out, model_dir):
    (out / "final").mkdir(parents=True)
    (out / "final" / "model.safetensors").write_bytes(b"trained weights")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')


def held(out, model_dir):
    out.mkdir()
    handle = open(out / ".rayalign.lock", "a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write("4242\n")
    handle.flush()
    return handle  # kept open by the test: another run holds the directory


# id, what is in OUTPUT_DIR first, extra argv, what the one error line must contain
CASES = [
    ("finished-run", finished, [], "holds an earlier run (final, metrics.jsonl) and no complete checkpoint; pass "
                                   "--overwrite to replace it"),
    ("finished-run-resume", finished, ["--resume"], "nothing to resume: "),
    ("checkpoints-without-resume", lambda out, m: checkpoint(out, 2, m), [],
     "already holds checkpoints of a run (last: checkpoint-000002); pass --resume to continue it"),
    ("resume-other-model", lambda out, m: checkpoint(out, 2, m, **{"model.name_or_path": "/models/llama"}), ["--resume"],
     'model.name_or_path: checkpoint-000002 in {out} was trained with "/models/llama"'),
    ("resume-adds-lora", lambda out, m: checkpoint(out, 2, m),
     ["--resume", "--model.lora.r", "8"], "model.lora: checkpoint-000002 in {out} was trained with null"),
    ("resume-other-trainer", lambda out, m: checkpoint(out, 2, m, trainer="dpo"), ["--resume"],
     'trainer: checkpoint-000002 in {out} was trained with "dpo", the recipe now says "sft"'),
    ("resume-finished", lambda out, m: checkpoint(out, 4, m), ["--resume"],
     "training.max_steps: the run in {out} already finished 4 steps"),
    ("overwrite-and-resume", finished, ["--resume", "--overwrite"], "--overwrite and --resume contradict each other"),
    ("in-use", held, [], "training.output_dir: {out} is in use by another rayalign run (pid 4242)"),
    ("output-dir-is-file", lambda out, m: out.write_text("x"), [], "training.output_dir: {out} is a file"),
    ("step-larger-than-data", None, ["--training.micro_batch_size", "64"],
     "training.micro_batch_size 64 x training.gradient_accumulation_steps 1 x scaling.num_workers 2 = 128 > 96 rows"),
    ("lr-inf", None, ["--training.learning_rate", "inf"], "training.learning_rate"),
]


def snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".rayalign.lock"}


@pytest.mark.parametrize("setup, argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_train_refused_in_one_line(setup, argv, expected, tiny_model_dir, tmp_path, capsys, no_ray):
    from rayalign.data.tasks import generate, to_row

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(to_row(ex, "sft", i)) + "\n" for i, ex in enumerate(generate("letter_count", 96, 1))))
    out = tmp_path / "out"
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({
        "trainer": "sft", "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": {"format": "sft", "datasets": [{"path": str(data)}], "max_length": 96}},
        "training": {"output_dir": str(out), "max_steps": 4, "micro_batch_size": 4},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1}}))
    keep = setup(out, tiny_model_dir) if setup else None
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["train", "-c", str(cfg), *argv])
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected.format(out=out) in lines[0], err
    assert snapshot(tmp_path) == before
    if hasattr(keep, "close"):
        keep.close()


def test_fewer_eval_rows_than_workers_is_refused(tiny_model_dir, tiny_tokenizer, tmp_path):
    """With 1 eval row and 2 workers every worker's share was empty and eval_loss came out 0."""
    from rayalign.config import RecipeConfig
    from rayalign.data.loading import load_split
    from rayalign.data.tasks import generate, to_row
    from rayalign.errors import UserError
    from rayalign.recipes import sft

    files = {}
    for name, n in (("train", 16), ("eval", 1)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(to_row(ex, "sft", i)) + "\n"
                                       for i, ex in enumerate(generate("letter_count", n, 1))))
    split = {"format": "sft", "max_length": 96}
    cfg = RecipeConfig.model_validate({
        "trainer": "sft", "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": {**split, "datasets": [{"path": str(files["train"])}]},
                 "eval": {**split, "datasets": [{"path": str(files["eval"])}]}},
        "training": {"micro_batch_size": 2}, "scaling": {"num_workers": 2}})
    splits = {name: load_split(getattr(cfg.data, name)) for name in ("train", "eval")}
    with pytest.raises(UserError, match=r"^data.eval: 1 rows for scaling.num_workers 2: every worker scores"):
        sft.prepare(cfg, tiny_tokenizer, splits)
