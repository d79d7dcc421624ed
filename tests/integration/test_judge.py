"""The LLM judge end to end: retries and the cache against a stub judge over real HTTP (a tiny random
model cannot write a verdict; see judge_stub.py), ``rayalign judge`` on a JSONL file, and a real tiny
model deployed as the judge's own Serve app (its answers hold no verdict: every item is retried and
reported unparsed, never scored)."""

import json

import pytest

from rayalign.cli import main
from rayalign.config import JudgeConfig, ModelConfig, ServeConfig
from rayalign.judge.judge import Judge, JudgeItem
from rayalign.judge.service import endpoint, release
from tests.integration import judge_stub
from tests.integration.conftest import free_port

RESPONSES = ["three", "there are three r letters", "I count 3 of them in the word strawberry today"]


def stub_judge(stub, tmp_path, **kw) -> JudgeConfig:
    return JudgeConfig(base_url=stub, model_name="stub", cache=str(tmp_path / "cache.sqlite"), **kw)


def test_retries_until_a_verdict_then_caches(stub, tmp_path):
    cfg = stub_judge(stub, tmp_path, max_retries=2)
    items = [JudgeItem(prompt="How many r in strawberry?", response=r) for r in RESPONSES]
    judge = Judge(cfg, endpoint(cfg))
    judge_stub.REQUESTS.clear()
    verdicts = judge.score(items)
    assert [v.score for v in verdicts] == [judge_stub.expected_score(r) for r in RESPONSES] == [2.0, 6.0, 1.0]
    assert [v.attempts for v in verdicts] == [2, 2, 2] and not any(v.cached for v in verdicts)
    assert sorted(r["temperature"] for r in judge_stub.REQUESTS) == [0, 0, 0, 0.7, 0.7, 0.7]
    assert sum(r["messages"][0]["content"].endswith("[User request]\nHow many r in strawberry?\n\n"
                                                    "[Assistant response]\nthree") for r in judge_stub.REQUESTS) == 2
    again = Judge(cfg, endpoint(cfg)).score(items)
    assert [v.score for v in again] == [2.0, 6.0, 1.0] and all(v.cached for v in again)
    assert len(judge_stub.REQUESTS) == 6  # the cache answered


def test_no_verdict_after_the_retries_is_reported(stub, tmp_path):
    cfg = stub_judge(stub, tmp_path, max_retries=0)
    [v] = Judge(cfg, endpoint(cfg)).score([JudgeItem(prompt="p", response="r")])
    assert v.score is None and v.attempts == 1 and v.error == "no score verdict in 1 answers"
    assert v.raw == "The response seems reasonable."


def test_judge_cli_scores_a_file(stub, tmp_path, capsys):
    rows = [{"prompt": [{"role": "user", "content": "Count r"}], "completion": r, "id": i}
            for i, r in enumerate(RESPONSES)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "judge.yaml").write_text(f"base_url: {stub}\nmodel_name: stub\ncache: null\n")
    with pytest.raises(SystemExit) as info:
        main(["judge", "-c", str(tmp_path / "judge.yaml"), "--input", str(tmp_path / "in.jsonl"),
              "--output", str(tmp_path / "out.jsonl"), "--max_retries", "1"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == [0, 1, 2]
    assert [r["judge_score"] for r in scored] == [2.0, 6.0, 1.0] and [r["judge_attempts"] for r in scored] == [2] * 3
    assert f"3/3 rows judged (mean 3.000, 0 from the cache, 3 needed a retry); wrote {tmp_path}/out.jsonl" in out


def test_judge_cli_names_a_bad_row(stub, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p"}\n')
    (tmp_path / "judge.yaml").write_text(f"base_url: {stub}\nmodel_name: stub\n")
    with pytest.raises(SystemExit) as info:
        main(["judge", "-c", str(tmp_path / "judge.yaml"), "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o")])
    assert info.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path}/in.jsonl:2: field 'response' is missing\n"


def test_judge_that_judged_nothing_exits_1(tmp_path, capsys):
    """Issue 20: an unreachable judge URL scored 0 of 3 rows with exit 0."""
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": "p", "response": r}) + "\n" for r in RESPONSES))
    (tmp_path / "judge.yaml").write_text(f"base_url: http://127.0.0.1:{free_port()}/v1\nmodel_name: x\ncache: null\n")
    with pytest.raises(SystemExit) as info:
        main(["judge", "-c", str(tmp_path / "judge.yaml"), "-i", str(tmp_path / "in.jsonl"), "-o",
              str(tmp_path / "out.jsonl"), "--max_retries", "0", "--timeout_s", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and err[-1].startswith("error: no row was judged (3 tried); most common error: ")
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3  # each row keeps its error


def test_local_tiny_judge_on_serve(ray_local, tiny_model_dir):
    cfg = JudgeConfig(model=ModelConfig(name_or_path=str(tiny_model_dir)), max_retries=1, max_tokens=16, cache=None,
                      serve=ServeConfig(engine="hf", port=free_port(), num_cpus=0.25, app_name="judge-test",
                                        route_prefix="/judge"))
    ep = endpoint(cfg)
    try:
        assert ep.base_url.endswith("/judge/v1")
        verdicts = Judge(cfg, ep).score([JudgeItem(prompt="Count r in strawberry", response=r) for r in RESPONSES])
    finally:
        release(cfg)
        from ray import serve

        serve.shutdown()
    for v in verdicts:  # the random model writes tokens, never "Rating: [[N]]" (asserted, not assumed)
        assert v.raw and v.attempts == 2 and v.score is None and v.error == "no score verdict in 2 answers"


def test_judge_as_grpo_reward(ray_local, tiny_model_dir, tmp_path, stub):
    """reward: {judge: judge.yaml} and no reward functions: each sample's reward is its (retried) judge
    verdict scaled to 0..1, asked of the judge service in one concurrent batch per step."""
    from rayalign.recipes.grpo import run
    from tests.integration.rl_helpers import grpo_recipe, prompt_file
    from tests.integration.test_grpo import read_metrics

    (tmp_path / "judge.yaml").write_text(f"base_url: {stub}\nmodel_name: stub\ncache: null\nconcurrency: 8\n")
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), tmp_path / "out", learners=1, kl_coef=0, max_steps=1)
    cfg = cfg.model_copy(update={"reward": cfg.reward.model_copy(
        update={"functions": [], "judge": str(tmp_path / "judge.yaml"), "judge_weight": 2.0})})
    judge_stub.REQUESTS.clear()
    run(cfg)
    [m] = read_metrics(tmp_path / "out")
    answers = [r["messages"][0]["content"].split("[Assistant response]\n", 1)[1]
               for r in judge_stub.REQUESTS if r["temperature"] > 0]
    assert len(answers) == 16 and len(judge_stub.REQUESTS) == 32  # 4 prompts x 4 samples, each retried once
    expected = [(judge_stub.expected_score(a) - 1) / 9 for a in answers]
    assert m["reward/judge"] == pytest.approx(sum(expected) / 16, abs=1e-6)
    assert m["reward_mean"] == pytest.approx(2.0 * sum(expected) / 16, abs=1e-6)
    assert m["reward_failures"] == 0
