"""Integration fixtures: one local Ray (2 CPUs) for the session, task data files made once."""

import json

import pytest


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
