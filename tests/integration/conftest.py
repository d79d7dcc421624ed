"""Integration fixtures: one local Ray (2 CPUs) for the session, task data files made once."""

import json
import socket

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def stub():
    """The deterministic stub judge (judge_stub.py) at an OpenAI-compatible base URL."""
    from tests.integration import judge_stub

    server = judge_stub.start(free_port())
    yield f"http://127.0.0.1:{server.config.port}/v1"
    server.should_exit = True


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def task_files(tmp_path_factory):
    """letter_count rows in every training format: {name: path}."""
    from rayalign.data.tasks import generate, to_row

    root = tmp_path_factory.mktemp("data")
    files = {}
    for name, fmt, n, seed in (("sft", "sft", 96, 1), ("sft_eval", "sft", 16, 2), ("text", "text", 200, 0),
                               ("preference", "preference", 48, 4), ("preference_eval", "preference", 8, 6),
                               ("kto", "kto", 48, 5)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(to_row(ex, fmt, i)) + "\n"
                                for i, ex in enumerate(generate("letter_count", n, seed))))
        files[name] = str(path)
    return files


@pytest.fixture(scope="session")
def fsdp2_sft_run(ray_local, tiny_model_dir, task_files, tmp_path_factory):
    """The baseline Ray Train run other runs are held against (DDP, gradient accumulation, resume, DeepSpeed):
    ``train_helpers.recipe``'s SFT as it is (FSDP2, 2 workers, 4 steps, micro batch 4); (OUTPUT_DIR, final)."""
    from rayalign.recipes.ray_train import run
    from train_helpers import build, recipe

    out = tmp_path_factory.mktemp("fsdp2") / "sft"
    return out, run(build(recipe(tiny_model_dir, "sft", task_files["sft"], out)))
