"""Issue 20: checkpoints are sealed by a manifest (a torn one is ignored, named and moved aside), an output
directory is held by one run at a time, an earlier run is never replaced without --overwrite, and --resume
refuses a recipe whose trainer, model, architecture or LoRA differ from the checkpoint's."""

import json
import shutil
import threading

import pytest

from rayalign.checkpoint import (TrainerState, checkpoints, incomplete, problem, run_identity, save_training_state,
                                 write_manifest)
from rayalign.config import RecipeConfig
from rayalign.errors import UserError
from rayalign.recipes.output_dir import LOCK, check_unfinished, claim


def recipe(model_dir, out, **training) -> RecipeConfig:
    return RecipeConfig.model_validate({
        "trainer": "sft", "model": {"name_or_path": str(model_dir)},
        "data": {"train": {"format": "sft", "datasets": [{"path": "unused.jsonl"}]}},
        "training": {"output_dir": str(out), **training}})


def fake_checkpoint(out, step, run):
    """A checkpoint as the loop writes it: files first, the manifest last."""
    import torch

    path = out / "checkpoints" / f"checkpoint-{step:06d}"
    (path / "model").mkdir(parents=True)
    (path / "model" / "model.safetensors").write_bytes(b"w" * 100)
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    torch.save(opt.state_dict(), path / "optimizer.pt")
    save_training_state(path, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                        TrainerState(step=step, samples_seen=4 * step))
    write_manifest(path, TrainerState(step=step), run)
    return path


def identity(model_dir, **changes):
    cfg = recipe(model_dir, "unused")
    run = run_identity("sft", cfg.model, "Qwen2ForCausalLM")
    return {**run, **changes}


def test_manifest_lists_every_file_and_a_torn_save_is_not_complete(tmp_path, tiny_model_dir):
    good = fake_checkpoint(tmp_path, 2, identity(tiny_model_dir))
    torn = fake_checkpoint(tmp_path, 4, identity(tiny_model_dir))
    files = json.loads((good / "checkpoint.json").read_text())["files"]
    assert set(files) == {"model/model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"}
    size = (torn / "optimizer.pt").stat().st_size
    with open(torn / "optimizer.pt", "r+b") as f:  # disk full: the file stops short
        f.truncate(size // 2)
    assert problem(torn) == f"optimizer.pt is {size // 2} bytes, {size} were written"
    assert checkpoints(tmp_path) == [good]
    (good / "trainer_state.json").write_text("")
    assert problem(good) == f"trainer_state.json is 0 bytes, {files['trainer_state.json']} were written"
    unsealed = fake_checkpoint(tmp_path, 6, identity(tiny_model_dir))
    (unsealed / "checkpoint.json").unlink()
    assert problem(unsealed) == "it has no checkpoint.json: its save did not finish"
    assert [p.name for p, _ in incomplete(tmp_path)] == ["checkpoint-000002", "checkpoint-000004", "checkpoint-000006"]


def test_resume_skips_a_torn_checkpoint_names_it_and_moves_it_aside(tmp_path, tiny_model_dir):
    good = fake_checkpoint(tmp_path, 2, identity(tiny_model_dir))
    torn = fake_checkpoint(tmp_path, 4, identity(tiny_model_dir))
    (torn / "trainer_state.json").write_text("")
    said = []
    with claim(recipe(tiny_model_dir, tmp_path, resume="auto"), said.append) as c:
        assert c.resume_from == good and c.state.step == 2
    assert said == ["ignoring checkpoint-000004: trainer_state.json is 0 bytes, "
                    f"{json.loads((torn.parent / 'checkpoint-000004.incomplete' / 'checkpoint.json').read_text())['files']['trainer_state.json']} "
                    "were written; moved to checkpoint-000004.incomplete"]
    assert not torn.exists() and (tmp_path / "checkpoints" / "checkpoint-000004.incomplete").is_dir()


@pytest.mark.parametrize("key,saved,message", [
    ("trainer", "dpo", 'trainer: checkpoint-000003 in {out} was trained with "dpo", the recipe now says "sft"'),
    ("model.name_or_path", "/models/llama-tiny",
     'model.name_or_path: checkpoint-000003 in {out} was trained with "/models/llama-tiny", the recipe now says'),
    ("architecture", "LlamaForCausalLM", 'architecture: checkpoint-000003 in {out} was trained with "LlamaForCausalLM"'),
    ("model.lora", {"r": 8}, 'model.lora: checkpoint-000003 in {out} was trained with {{"r": 8}}, the recipe now says null'),
])
def test_resume_refuses_a_changed_recipe_naming_the_key(tmp_path, tiny_model_dir, key, saved, message):
    fake_checkpoint(tmp_path, 3, identity(tiny_model_dir, **{key: saved}))
    with pytest.raises(UserError) as err:
        with claim(recipe(tiny_model_dir, tmp_path, resume="auto")):
            pass
    assert str(err.value).startswith(message.format(out=tmp_path))
    assert "--resume needs the recipe the run started with" in str(err.value)


def test_a_finished_run_is_never_replaced_without_overwrite(tmp_path, tiny_model_dir):
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "model.safetensors").write_bytes(b"trained")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "notes.txt").write_text("mine")
    for resume in ("never", "auto"):
        with pytest.raises(UserError, match=r"holds an earlier run \(final, metrics.jsonl\) and no complete "
                                            r"checkpoint; pass --overwrite"):
            with claim(recipe(tiny_model_dir, tmp_path, resume=resume)):
                pass
    assert (tmp_path / "final" / "model.safetensors").read_bytes() == b"trained"
    said = []
    with claim(recipe(tiny_model_dir, tmp_path, overwrite=True), said.append) as c:
        assert c.resume_from is None
    assert said == [f"--overwrite: removed the earlier run in {tmp_path} (final, metrics.jsonl)"]
    assert not (tmp_path / "final").exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_checkpoints_without_resume_are_refused_and_a_finished_run_cannot_resume(tmp_path, tiny_model_dir):
    fake_checkpoint(tmp_path, 5, identity(tiny_model_dir))
    with pytest.raises(UserError, match="already holds checkpoints of a run \\(last: checkpoint-000005\\); pass "
                                        "--resume to continue it, --overwrite to replace it"):
        with claim(recipe(tiny_model_dir, tmp_path)):
            pass
    with claim(recipe(tiny_model_dir, tmp_path, resume="auto")) as c:
        with pytest.raises(UserError, match="training.max_steps: the run in .* already finished 5 steps"):
            check_unfinished(c, 5)
        check_unfinished(c, 6)


def test_one_run_at_a_time_per_output_dir(tmp_path, tiny_model_dir):
    inside, release = threading.Event(), threading.Event()

    def first():
        with claim(recipe(tiny_model_dir, tmp_path)):
            inside.set()
            release.wait(30)

    holder = threading.Thread(target=first)
    holder.start()
    inside.wait(30)
    try:
        with pytest.raises(UserError, match=rf"training.output_dir: {tmp_path} is in use by another rayalign run "
                                            r"\(pid \d+\); wait for it"):
            with claim(recipe(tiny_model_dir, tmp_path)):
                pass
    finally:
        release.set()
        holder.join()
    with claim(recipe(tiny_model_dir, tmp_path)):  # released when the first run ended
        assert (tmp_path / LOCK).exists()


def test_output_dir_that_is_a_file_and_contradicting_flags(tmp_path, tiny_model_dir):
    (tmp_path / "run").write_text("x")
    with pytest.raises(UserError, match=rf"^training.output_dir: {tmp_path / 'run'} is a file, not a directory$"):
        with claim(recipe(tiny_model_dir, tmp_path / "run")):
            pass
    with pytest.raises(UserError, match="--overwrite and --resume contradict each other"):
        with claim(recipe(tiny_model_dir, tmp_path / "other", overwrite=True, resume="auto")):
            pass
    shutil.rmtree(tmp_path / "other", ignore_errors=True)
