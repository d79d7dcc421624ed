"""Issue 17: vision-language training on the tiny Idefics3 (vLLM loads it). VL-SFT on 2 Ray Train workers (FSDP2
over the vision tower's and the decoder's layers) learns the built-in ``colour`` task: held-out accuracy by the
task's checker far above the best constant answer, and the final directory loads as a VLM with its processor. Then
GRPO on ``vl_prompt`` rows (``shape_colour``, which that model half knows) through every role: the vLLM rollout
engine with multimodal prompts, 2 FSDP2 learners, the reference actor and a reward worker, each reading the
prompts' images, with the weight sync's fingerprint (vision tower included) checked at every sync."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from rayalign.config import EvalTaskConfig, ModelConfig, RecipeConfig
from rayalign.data.visual_tasks import generate_visual, write_rows
from rayalign.metrics import read_metrics

STEPS = 120


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from rayalign.models.tiny_vlm import create_tiny_vlm

    return create_tiny_vlm(tmp_path_factory.mktemp("vlm") / "idefics3", arch="idefics3")


def vl_sft_recipe(model, root) -> RecipeConfig:
    write_rows(generate_visual("colour", 16 * STEPS, seed=0), "vl_sft", root / "train.jsonl")
    write_rows(generate_visual("colour", 16, seed=1), "vl_sft", root / "eval.jsonl")
    split = {"format": "vl_sft", "max_length": 64}
    return RecipeConfig.model_validate({
        "trainer": "vl_sft",
        "model": {"name_or_path": str(model)},
        "data": {"train": {**split, "datasets": [{"path": str(root / "train.jsonl")}]},
                 "eval": {**split, "datasets": [{"path": str(root / "eval.jsonl")}], "shuffle": False}},
        "training": {"output_dir": str(root / "out"), "learning_rate": 1e-3, "lr_scheduler": "cosine",
                     "warmup_steps": 10, "micro_batch_size": 8, "max_steps": STEPS, "eval_steps": STEPS,
                     "logging_steps": 10},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "torch_threads": 1, "strategy": "fsdp"},
    })


@pytest.fixture(scope="module")
def vl_sft_final(ray_local, tiny_vlm, tmp_path_factory):
    from rayalign.recipes.ray_train import run

    cfg = vl_sft_recipe(tiny_vlm, tmp_path_factory.mktemp("vl_sft"))
    return cfg, run(cfg)


def test_vl_sft_on_two_workers_learns_the_visual_task_far_beyond_the_best_constant(vl_sft_final, tmp_path):
    from rayalign.config import EvalConfig
    from rayalign.evaluate.run import evaluate

    cfg, final = vl_sft_final
    metrics = read_metrics(cfg.training.output_dir)
    assert metrics[-1]["step"] == STEPS and metrics[-1]["loss"] < 0.1 * metrics[0]["loss"]
    # per assistant token on rows it never trained on; answering blind costs ~log(4) on the colour token
    assert metrics[-1]["eval_loss"] < 0.1
    processor = AutoProcessor.from_pretrained(final)  # the processor is saved with the model
    AutoModelForImageTextToText.from_pretrained(final)
    assert processor.image_token_id == AutoModelForImageTextToText.from_pretrained(final).config.image_token_id
    # rayalign evaluate: the held-out visual tasks, each scored by its checker beside the best constant answer
    results = evaluate(EvalConfig(model=ModelConfig(name_or_path=str(final)), engine="hf", output_dir=str(tmp_path),
                                  tasks=[EvalTaskConfig(name=task, kind="generate", task=task, num_samples=100,
                                                        max_new_tokens=16) for task in ("colour", "shape_colour")]))
    colour, other = results["tasks"]["colour"], results["tasks"]["shape_colour"]
    print(f"after VL-SFT on colour: {colour}\nshape_colour (not trained): {other}")
    assert colour["format_rate"] == 1.0 and colour["best_constant"] < 0.35
    assert colour["accuracy"] >= 0.9, colour
    assert all(colour["accuracy_by_answer"][c] >= 0.8 for c in ("red", "green", "blue", "yellow")), colour


def test_vl_sft_stopped_and_resumed_ends_bit_for_bit_where_the_straight_run_did(vl_sft_final, tiny_vlm, tmp_path):
    from safetensors.torch import load_file

    from rayalign.recipes.ray_train import run

    _, straight = vl_sft_final
    cfg = vl_sft_recipe(tiny_vlm, tmp_path)
    half = cfg.model_copy(update={"training": cfg.training.model_copy(update={"stop_after_steps": STEPS // 2})})
    assert run(half) is None  # a checkpoint at step 60, with the processor beside the weights
    said = []
    resumed = run(cfg.model_copy(update={"training": cfg.training.model_copy(update={"resume": "auto"})}),
                  echo=said.append)
    assert f"vl_sft: {16 * STEPS} train rows, {STEPS} steps, resuming after step {STEPS // 2}" in said
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert AutoProcessor.from_pretrained(resumed).image_token_id == AutoProcessor.from_pretrained(straight).image_token_id


def test_grpo_on_the_vlm_through_every_role_with_vllm_reads_the_images_and_syncs(vl_sft_final, tmp_path):
    from rayalign.recipes.grpo import run

    _, final = vl_sft_final
    write_rows(generate_visual("shape_colour", 16, seed=3), "vl_prompt", tmp_path / "prompts.jsonl")
    cfg = RecipeConfig.model_validate({
        "trainer": "grpo",
        "model": {"name_or_path": str(final)},
        "data": {"train": {"format": "vl_prompt", "datasets": [{"path": str(tmp_path / "prompts.jsonl")}],
                           "max_length": 64}},
        "training": {"output_dir": str(tmp_path / "out"), "learning_rate": 1e-3, "lr_scheduler": "constant",
                     "max_steps": 2, "micro_batch_size": 8, "seed": 7},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5, "torch_threads": 1},
        "algorithm": {"name": "grpo", "prompts_per_step": 4, "group_size": 4, "kl_coef": 0.05},
        "rollout": {"engine": "vllm", "num_cpus": 0.5, "max_new_tokens": 16, "temperature": 1.0},
        "reward": {"functions": [{"name": "boxed_answer"}], "num_cpus": 0.25},
        "reference": {"num_cpus": 0.25},
    })
    out = run(cfg)
    metrics = read_metrics(tmp_path / "out")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["reward_failures"] == 0 and m["groups_kept"] > 0 and m["time_sync_s"] > 0, m
        # the learners recompute the engine's log-probs with the images (the same tokens scored blind, or with
        # another image, differ by ~1 nat): vLLM and the FSDP2 learners agree on every sampled token
        assert m["mismatch_kl"] < 1e-4, m
    assert metrics[0]["kl"] == pytest.approx(0, abs=1e-5)  # the reference actor scored the same images
    assert metrics[1]["kl"] > 1e-7  # one update later the policy has moved from it
    tuned = dict(AutoModelForImageTextToText.from_pretrained(out).named_parameters())
    before = dict(AutoModelForImageTextToText.from_pretrained(final).named_parameters())
    moved = {name for name, p in tuned.items() if not torch.equal(p, before[name])}
    assert any(".text_model." in n for n in moved) and any(".vision_model." in n for n in moved)


def test_infer_answers_vl_rows_and_names_a_missing_image_with_its_line(vl_sft_final, tmp_path, capsys):
    import json

    from rayalign.config import InferConfig
    from rayalign.errors import DataError
    from rayalign.inference import batch

    _, final = vl_sft_final
    examples = generate_visual("colour", 8, seed=21)
    write_rows(examples, "vl_prompt", tmp_path / "in.jsonl")
    cfg = InferConfig(engine="hf", num_cpus=0.5, max_model_len=256, temperature=0, max_new_tokens=16)
    batch(ModelConfig(name_or_path=str(final)), cfg, tmp_path / "in.jsonl", tmp_path / "out.jsonl", print)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in rows] == [ex.answer for ex in examples]
    assert sum(r["response"].endswith(f"\\boxed{{{r['answer']}}}") for r in rows) >= 7, rows
    lines = (tmp_path / "in.jsonl").read_text().splitlines()
    (tmp_path / "in.jsonl").write_text("\n".join(lines[:2] + [lines[2].replace("000002.png", "gone.png")]) + "\n")
    with pytest.raises(DataError, match=r"in.jsonl:3: messages\[0\].content\[0\].image names .*gone.png, which "
                                        r"does not exist"):
        batch(ModelConfig(name_or_path=str(final)), cfg, tmp_path / "in.jsonl", tmp_path / "out2.jsonl", print)


def _data_url(image) -> str:
    import base64
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_serve_answers_image_chats_through_the_openai_client_and_names_each_bad_image(vl_sft_final, tmp_path):
    import httpx
    import openai
    from ray import serve

    from rayalign.config import ServeConfig
    from rayalign.serve.deploy import deploy
    from tests.integration.conftest import free_port

    _, final = vl_sft_final
    shown = tmp_path / "shown"
    shown.mkdir()
    examples = generate_visual("colour", 6, seed=11)
    examples[0].image.save(shown / "a.png")
    cfg = ServeConfig(port=free_port(), num_cpus=0.5, max_model_len=256, served_model_name="vlm",
                      image_dir=str(shown), app_name="vlm")
    url = deploy(ModelConfig(name_or_path=str(final)), cfg)
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)

        def ask(image_url: str, **kw):
            return client.chat.completions.create(model="vlm", max_tokens=16, temperature=0, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                             {"type": "text", "text": "What colour is the shape?"}]}], **kw)

        for ex in examples:  # the fine-tuned model names each shape's colour: it sees the image sent
            reply = ask(_data_url(ex.image))
            assert reply.choices[0].message.content.endswith(f"\\boxed{{{ex.answer}}}"), (ex.answer, reply)
        local = ask(f"file://{shown / 'a.png'}")
        assert local.choices[0].message.content == ask(_data_url(examples[0].image)).choices[0].message.content
        assert local.usage.prompt_tokens > 16  # the image's tokens count as prompt tokens
        streamed = "".join(c.choices[0].delta.content or "" for c in ask(_data_url(examples[1].image), stream=True)
                           if c.choices)
        assert streamed.endswith(f"\\boxed{{{examples[1].answer}}}")

        (tmp_path / "secret.png").write_bytes((shown / "a.png").read_bytes())
        bad = {"data:image/png;base64,bm90IGFuIGltYWdl": "cannot read the image",
               f"file://{tmp_path / 'secret.png'}": "is outside the directory this server reads images from",
               f"file://{shown / 'missing.png'}": "does not exist",
               "https://example.com/a.png": "remote image URLs are off on this server",
               "ftp://example.com/a.png": "must be a data:image/...;base64 URL"}
        for image_url, said in bad.items():
            with pytest.raises(openai.BadRequestError) as err:
                ask(image_url)
            body = err.value.body
            assert said in body["message"] and body["param"] == "messages.0.content.0.image_url.url", body
        assert httpx.get(url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
    finally:
        serve.shutdown()  # Serve keeps its HTTP port per cluster: later tests start it on theirs
