"""Issue 22: the Python API (``rayalign/api.py``). Every public name documented; configs from a path or an
object with overrides of either kind; typed errors, never an exit; and the CLI calling exactly these functions.
(The driver script runs end to end in ``tests/integration/test_driver.py`` and as a Ray job in ``test_jobs.py``.)"""

import inspect
import json

import pytest

import rayalign
from rayalign import api
from rayalign.cli import main

SFT = """\
trainer: sft
model:
  name_or_path: some/model
data:
  train:
    format: sft
    datasets:
      - path: rows.jsonl
training:
  output_dir: {out}
"""


def test_every_public_name_has_a_docstring():
    missing = [name for name in rayalign.__all__ if name != "__version__"
               and not inspect.getdoc(getattr(rayalign, name))]
    assert missing == []
    for name in ("train", "evaluate", "infer", "judge", "serve", "tune", "make_data", "create_tiny_model"):
        assert callable(getattr(rayalign, name)) and getattr(rayalign, name).__module__ == "rayalign.api"


def test_the_packages_named_like_functions_do_not_hide_them():
    from rayalign.evaluate.run import results_path  # noqa: F401  (loads the packages' modules)
    from rayalign.judge.judge import Judge  # noqa: F401
    from rayalign.serve.protocol import ChatRequest  # noqa: F401
    from rayalign.tune import run  # noqa: F401

    assert all(inspect.isfunction(getattr(rayalign, name)) for name in ("evaluate", "judge", "serve", "tune"))


def test_a_config_from_a_path_or_an_object_with_either_kind_of_overrides(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(SFT.format(out=tmp_path / "run"))
    listed = api.resolve(path, ["--training.max_steps", "7"])
    keyed = api.resolve(path, {"training.max_steps": 7})
    assert listed.training.max_steps == keyed.training.max_steps == 7
    assert api.resolve(keyed, {"training.learning_rate": 0.5}).training.learning_rate == 0.5
    assert api.resolve(keyed) is keyed
    with pytest.raises(rayalign.UserError, match="give a dict of dotted keys"):
        api.resolve(keyed, ["--training.max_steps", "3"])
    with pytest.raises(rayalign.UserError, match="a RecipeConfig where a EvalConfig is needed"):
        api.resolve(keyed, None, rayalign.EvalConfig)
    with pytest.raises(rayalign.ConfigError, match="training.max_steps"):
        api.resolve(path, {"training.max_steps": "many"})


def test_errors_are_raised_not_exits(tmp_path):
    with pytest.raises(rayalign.UserError, match="data: required key is missing"):
        rayalign.train(rayalign.RecipeConfig.model_validate({"trainer": "sft", "model": {"name_or_path": "m"}}))
    with pytest.raises(rayalign.UserError, match="unknown task 'nope'"):
        rayalign.make_data("nope", tmp_path / "x.jsonl")
    with pytest.raises(rayalign.UserError, match="serve needs a config or model="):
        rayalign.serve()


def test_make_data_returns_the_file_it_wrote(tmp_path):
    lines = []
    path = rayalign.make_data("letter_count", tmp_path / "rows.jsonl", n=5, format="sft", echo=lines.append)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 5 and rows[0]["messages"][-1]["role"] == "assistant"
    assert lines == [f"wrote 5 'sft' rows of letter_count to {path}"]


def test_the_cli_calls_the_api(tmp_path, monkeypatch, capsys):
    """One code path: ``rayalign train`` / ``evaluate`` / ``tune`` are the API's functions with the CLI's flags."""
    calls = []
    for name in ("train", "evaluate", "tune", "judge", "infer"):
        monkeypatch.setattr(api, name, lambda *a, _name=name, **kw: calls.append((_name, a, kw)))
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(SFT.format(out=tmp_path / "run"))
    for argv in (["train", "-c", str(cfg), "--resume", "--training.max_steps", "3"],
                 ["evaluate", "-c", str(cfg), "--force"], ["tune", "-c", str(cfg), "--resume"],
                 ["judge", "-c", str(cfg), "-i", "in.jsonl", "-o", "out.jsonl"],
                 ["infer", "--model", "m", "-i", "in.jsonl", "-o", "out.jsonl"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0, capsys.readouterr()
    names = [c[0] for c in calls]
    assert names == ["train", "evaluate", "tune", "judge", "infer"]
    train = calls[0]
    assert train[1] == (cfg, ["--training.max_steps", "3"]) and train[2]["resume"] is True
    assert calls[1][2]["force"] is True and calls[2][2]["resume"] is True
    assert calls[4][2]["model"] == "m"
