"""Model loading from a ModelConfig: dtype, LoRA via peft, clear errors for bad paths."""

import pytest
import torch

from rayalign.config import LoraConfig, ModelConfig
from rayalign.errors import UserError
from rayalign.models.loading import load_model, load_tokenizer


def test_full_model_in_requested_dtype(tiny_model_dir):
    model = load_model(ModelConfig(name_or_path=str(tiny_model_dir), dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert all(p.requires_grad for p in model.parameters())
    tok = load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir)))
    assert tok.pad_token == "<|endoftext|>"


def test_lora_wraps_with_peft_and_trains_only_adapters(tiny_model_dir):
    from peft import PeftModel

    cfg = ModelConfig(name_or_path=str(tiny_model_dir), lora=LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    model = load_model(cfg)
    assert isinstance(model, PeftModel)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # 2 layers x (q, v) x (A: 4x128 + B: out x 4); q and v are 128 wide here
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == 2 * 2 * (4 * 128 + 128 * 4)


def test_missing_model_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=rf"^model.name_or_path: the local directory '{tmp_path}/none' does not "
                                        "exist; a training run writes OUTPUT_DIR/final when it finishes"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "none")))
    (tmp_path / "none").mkdir()  # there, but no model in it: transformers' own reason
    with pytest.raises(UserError, match=rf"^model.name_or_path: cannot load model '{tmp_path}/none'"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "none")))


def test_missing_run_output_names_the_recipe_that_writes_it(tmp_path, monkeypatch):
    """Issue 11: dpo.yaml before sft.yaml said "Repo id must be in the form 'repo_name'"."""
    recipes = tmp_path / "configs" / "recipes" / "tiny"
    recipes.mkdir(parents=True)
    (recipes / "sft.yaml").write_text("trainer: sft\ntraining:\n  output_dir: outputs/sft\n")
    (recipes / "broken.yaml").write_text("training: [\n")
    (tmp_path / "outputs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        load_tokenizer(ModelConfig(name_or_path="outputs/sft/final"))
    assert str(err.value) == ("model.name_or_path: the local directory 'outputs/sft/final' does not exist; it is "
                              "written by configs/recipes/tiny/sft.yaml: run `rayalign train -c "
                              "configs/recipes/tiny/sft.yaml` first")
