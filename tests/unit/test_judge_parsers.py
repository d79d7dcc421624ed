"""Judge verdict parsers on hand-written answers, prompt rendering, judge config errors, cache keys."""

import pytest

from rayalign.config import JudgeConfig, ModelConfig
from rayalign.errors import ConfigError
from rayalign.judge.judge import Endpoint, Judge, JudgeItem, Verdict, VerdictCache
from rayalign.judge.parsers import parse
from rayalign.judge.templates import render, resolve


@pytest.mark.parametrize("parser, text, expected", [
    ("score", "The answer is correct and complete.\nRating: [[8]]", 8.0),
    ("score", "Score: 3 out of 10. Wait, revised: Score: 4", 4.0),   # the last verdict counts
    ("score", "7/10", 7.0),
    ("score", "Rating: **9**", 9.0),
    ("score", "Rating: [[11]]", None),                                  # outside 1..10
    ("score", "I would give it a high mark.", None),
    ("score", "It has 3 steps, all fine.", None),                        # a number in prose is no verdict
    ("yes_no", "Both say 3.\nVerdict: [[yes]]", 1.0),
    ("yes_no", "No, the response says 4.", 0.0),
    ("yes_no", "Answer: NO", 0.0),
    ("yes_no", "Maybe.", None),
    ("pairwise", "A is clearer. [[A]]", 1.0),
    ("pairwise", "[[B]]", 0.0),
    ("pairwise", "Equally good: [[C]]", 0.5),
    ("pairwise", "B", 0.0),
    ("pairwise", "Both have merits.", None),
    ("json", 'Here: {"score": 6, "why": "ok"}', 6.0),
    ("json", '{"score": "high"}', None),
    ("json", "no json", None),
])
def test_parsers(parser, text, expected):
    assert parse(parser, text) == expected


def test_builtin_and_custom_templates():
    template, parser = resolve(JudgeConfig(template="correctness", base_url="http://x", model_name="m"))
    assert parser == "yes_no"
    text = render(template, {"prompt": "2+2?", "response": "4", "reference": "four"})
    assert "[Question]\n2+2?" in text and "[Reference answer]\nfour" in text and "[Assistant response]\n4" in text
    custom = JudgeConfig(template='Q: {prompt}\nA: {response}\nReply as {"score": N}', parser="json",
                         base_url="http://x", model_name="m")
    template, parser = resolve(custom)
    assert parser == "json"
    assert render(template, {"prompt": "hi", "response": "yo"}) == 'Q: hi\nA: yo\nReply as {"score": N}'


def test_judge_config_errors(tmp_path):
    from rayalign.config_io import load_config

    def error(text):
        path = tmp_path / "judge.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path, kind=JudgeConfig)
        return str(info.value)

    assert error("template: helpfulness\n") == f"{tmp_path}/judge.yaml:1: model: set exactly one of model (a local " \
                                               "judge) and base_url (an API)"
    assert error("base_url: http://x\n") == f"{tmp_path}/judge.yaml:1: model_name: required with base_url: the " \
                                            "model name the API serves"
    assert error("base_url: http://x\nmodel_name: m\ntemplate: 'Rate {response}'\nparser: score\n") == (
        f"{tmp_path}/judge.yaml:3: template: not a built-in judge (helpfulness, correctness, safety, pairwise) "
        "and the prompt lacks {prompt}")
    assert "parser: input should be" in error("base_url: http://x\nmodel_name: m\nparser: stars\n").lower()


def test_cache_key_follows_the_judge_and_the_item(tmp_path):
    cfg = JudgeConfig(base_url="http://x", model_name="m", cache=str(tmp_path / "c.sqlite"))
    a, b = JudgeItem("p", "r"), JudgeItem("p", "r2")
    judge = Judge(cfg, Endpoint("http://x", "m"))
    assert judge.key(a) == Judge(cfg, Endpoint("http://y", "m")).key(a)          # same model elsewhere
    assert judge.key(a) != judge.key(b)
    assert judge.key(a) != Judge(cfg, Endpoint("http://x", "other")).key(a)
    assert judge.key(a) != Judge(cfg.model_copy(update={"template": "safety"}), Endpoint("http://x", "m")).key(a)
    cache = VerdictCache(cfg.cache)
    cache.put(judge.key(a), Verdict(score=7.0, raw="Rating: [[7]]"))
    assert VerdictCache(cfg.cache).get(judge.key(a)) == Verdict(score=7.0, raw="Rating: [[7]]", cached=True)
    assert cache.get(judge.key(b)) is None


def test_local_judge_serves_on_its_own_route():
    cfg = JudgeConfig(model=ModelConfig(name_or_path="m"))
    assert (cfg.serve.app_name, cfg.serve.route_prefix) == ("rayalign-judge", "/judge")
