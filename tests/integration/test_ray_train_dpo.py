"""The DPO family on Ray Train (2 FSDP2 workers): the reference pass on Ray Data feeds DPO, the online
reference gives the same first step, reference-free SimPO runs without one, KTO trains on unpaired rows."""

import pytest

from rayalign.metrics import read_metrics
from rayalign.recipes.ray_train import run
from train_helpers import build, recipe


def _dpo(tiny_model_dir, task_files, out, **preference):
    d = recipe(tiny_model_dir, "dpo", task_files["preference"], out, eval_file=task_files["preference_eval"],
               max_steps=3, learning_rate=1e-3, lr_scheduler="constant", warmup_steps=0)
    return build(d, preference=preference)


@pytest.fixture(scope="module")
def precomputed(ray_local, tiny_model_dir, task_files, tmp_path_factory):
    """DPO (sigmoid, beta 0.1) with the reference pass on Ray Data: (OUTPUT_DIR, final)."""
    out = tmp_path_factory.mktemp("dpo") / "pre"
    return out, run(_dpo(tiny_model_dir, task_files, out, loss_type="sigmoid", beta=0.1))


def test_dpo_precomputed_reference_trains_and_logs_rewards(precomputed):
    out, final = precomputed
    rows = read_metrics(out)
    first = rows[0]
    # step 1: the policy is the reference, so every implicit reward is 0 and the loss is log 2
    assert first["loss"] == pytest.approx(0.693147, abs=1e-4)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert {"rewards/rejected", "rewards/accuracies", "logps/chosen", "eval_loss",
            "eval_rewards/margins"} <= set(rows[-1])
    # 3 steps of 8 pairs: each step's batch differs, so learning shows on the held-out pairs
    assert rows[-1]["eval_rewards/margins"] > 0 and rows[-1]["eval_loss"] < first["loss"]
    assert (final / "model.safetensors").is_file()


def test_online_reference_matches_precomputed(precomputed, tiny_model_dir, task_files, tmp_path):
    run(_dpo(tiny_model_dir, task_files, tmp_path / "on", loss_type="sigmoid", beta=0.1, reference="online"))
    pre, on = read_metrics(precomputed[0]), read_metrics(tmp_path / "on")
    for key in ("loss", "rewards/margins", "eval_loss"):  # every step's reference log-probs the same
        assert [r.get(key) for r in pre] == pytest.approx([r.get(key) for r in on], abs=1e-4), key


def test_simpo_is_reference_free(ray_local, tiny_model_dir, task_files, tmp_path):
    run(_dpo(tiny_model_dir, task_files, tmp_path / "simpo", loss_type="simpo", beta=2.0, simpo_gamma=0.5))
    rows = read_metrics(tmp_path / "simpo")
    assert rows[0]["rewards/chosen"] < -1.0  # beta x mean token log-prob of a random model: far below 0
    assert rows[-1]["eval_loss"] < rows[0]["loss"] and rows[-1]["eval_rewards/margins"] > 0  # held-out pairs


def test_kto_trains_on_unpaired_rows(ray_local, tiny_model_dir, task_files, tmp_path):
    d = recipe(tiny_model_dir, "kto", task_files["kto"], tmp_path / "kto", max_steps=3, learning_rate=5e-3,
               lr_scheduler="constant", warmup_steps=0)
    run(build(d, preference={"loss_type": "kto", "beta": 0.1}))
    rows = read_metrics(tmp_path / "kto")
    assert rows[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # 1 - sigmoid(0) at the reference
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert rows[-1]["loss"] < rows[0]["loss"]
