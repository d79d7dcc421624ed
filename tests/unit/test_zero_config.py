"""The DeepSpeed config a run gets (``training/zero.ds_config``) and the checks on a user's DeepSpeed JSON
(``recipes/common.local_paths`` reads it on the driver)."""

import json

import pytest

from rayalign.config import RecipeConfig, ScalingConfig, TrainingConfig
from rayalign.errors import UserError
from rayalign.recipes.common import local_paths
from rayalign.training.zero import ds_config

TRAINING = TrainingConfig(learning_rate=2e-4, weight_decay=0.01, max_grad_norm=0.5, micro_batch_size=4,
                          gradient_accumulation_steps=2)


def scaling(config=None, **deepspeed) -> ScalingConfig:
    return ScalingConfig(num_workers=2, strategy="deepspeed", deepspeed=deepspeed, deepspeed_config=config)


def test_the_typed_fields_make_the_whole_config():
    out = ds_config(scaling(zero_stage=3, offload_optimizer=True, offload_params=True), TRAINING, 2)
    assert out["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                        "offload_param": {"device": "cpu"}}
    assert (out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"], out["train_batch_size"]) == \
        (4, 2, 16)  # 4 x 2 x 2 workers
    assert out["gradient_clipping"] == 0.5
    assert out["optimizer"] == {"type": "AdamW", "params": {"lr": 2e-4, "weight_decay": 0.01, "betas": [0.9, 0.999],
                                                            "eps": 1e-8, "torch_adam": False}}  # offload: CPU Adam
    assert ds_config(scaling(), TRAINING, 2)["optimizer"]["params"]["torch_adam"] is True
    assert ds_config(scaling(), TRAINING.model_copy(update={"max_grad_norm": None}), 2)["gradient_clipping"] == 0.0


def test_a_users_json_is_merged_and_auto_takes_the_recipes_values():
    user = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 2,
            "zero_optimization": {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 5e7},
            "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": [0.9, 0.95]}}}
    out = ds_config(scaling(user), TRAINING, 2)
    assert out["zero_optimization"] == {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 5e7}
    assert out["train_micro_batch_size_per_gpu"] == 4 and out["optimizer"]["params"]["lr"] == 2e-4
    assert out["optimizer"]["params"]["betas"] == [0.9, 0.95]  # theirs where the recipe has no field
    assert user["optimizer"]["params"]["lr"] == "auto"  # the user's dict is not changed


@pytest.mark.parametrize("user, message", [
    ({"train_micro_batch_size_per_gpu": 8}, "train_micro_batch_size_per_gpu is 8 but the recipe gives 4"),
    ({"train_batch_size": 64}, "train_batch_size is 64 but the recipe gives 16"),
    ({"gradient_clipping": 1.0}, "gradient_clipping is 1.0 but the recipe gives 0.5"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}, "optimizer.params.lr is 0.001 but the recipe gives"),
    ({"scheduler": {"type": "WarmupLR"}}, "`scheduler` is not supported: the schedule is training.lr_scheduler"),
    ({"fp16": {"enabled": True}}, "`fp16` is not supported"),
    ({"bf16": {"enabled": True}}, "bf16.enabled needs model.dtype: bfloat16"),
    ({"optimizer": {"type": "Lamb"}}, "optimizer.type 'Lamb': only Adam / AdamW"),
])
def test_a_disagreement_is_one_error_naming_the_key(user, message):
    with pytest.raises(UserError, match="^scaling.deepspeed_config: ") as err:
        ds_config(scaling(user), TRAINING, 2)
    assert message in str(err.value)


def test_the_json_file_is_read_on_the_driver_and_its_errors_name_the_file(tmp_path):
    good = tmp_path / "ds.json"
    good.write_text(json.dumps({"zero_optimization": {"stage": 2, "contiguous_gradients": True}}))
    cfg = RecipeConfig.model_validate({"model": {"name_or_path": "m"}, "scaling": {
        "num_workers": 2, "strategy": "deepspeed", "deepspeed_config": str(good)}})
    assert local_paths(cfg).scaling.deepspeed_config == {"zero_optimization": {"stage": 2,
                                                                                "contiguous_gradients": True}}
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n')
    with pytest.raises(UserError, match=rf"^scaling.deepspeed_config: {bad}:2: not JSON"):
        local_paths(cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"deepspeed_config": str(bad)})}))
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({"gradient_accumulation_steps": 4}))
    with pytest.raises(UserError, match="gradient_accumulation_steps is 4 but the recipe gives 1"):
        local_paths(cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"deepspeed_config": str(clash)})}))


def test_the_zero_stage_is_the_jsons_unless_the_typed_field_says_otherwise():
    user = {"zero_optimization": {"stage": 3}}
    assert ds_config(scaling(user), TRAINING, 2)["zero_optimization"]["stage"] == 3
    assert ds_config(scaling(user, offload_params=True), TRAINING, 2)["zero_optimization"]["offload_param"] == \
        {"device": "cpu"}
    with pytest.raises(UserError, match="zero_optimization.stage is 3 but the recipe gives 2"):
        ds_config(scaling(user, zero_stage=2), TRAINING, 2)
    with pytest.raises(UserError, match=r"^scaling.deepspeed: parameter offload needs ZeRO stage 3 \(it is 2\)"):
        ds_config(scaling(offload_params=True), TRAINING, 2)


def test_deepspeed_settings_without_the_strategy_are_refused():
    with pytest.raises(ValueError, match="deepspeed_config is set but strategy is fsdp; set strategy: deepspeed"):
        ScalingConfig(deepspeed_config={"zero_optimization": {"stage": 2}})
