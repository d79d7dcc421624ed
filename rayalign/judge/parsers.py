"""Reading a judge's verdict out of free text. Each parser returns a number, or None when the text holds
no verdict (the judge then asks again). Where a judge writes several candidates, the last one counts:
judges explain first and conclude last.

- score: 1..10 from ``[[N]]``, ``Rating: N`` / ``Score: N`` or a bare number (``7`` or ``7/10``).
- yes_no: 1.0 / 0.0 from ``[[yes]]``, ``Verdict: yes`` / ``Answer: no`` or a leading yes / no.
- pairwise: 1.0 (A better), 0.0 (B better), 0.5 (tie) from ``[[A]]`` / ``[[B]]`` / ``[[C]]`` or a bare letter.
- json: the number under ``json_key`` in the first {...} object of the text.
"""

from __future__ import annotations

import json
import re

_NUMBER = r"(\d+(?:\.\d+)?)"
_SCORE = [re.compile(r"\[\[\s*" + _NUMBER + r"\s*\]\]"),
          re.compile(r"(?:rating|score)\s*[:=]?\s*\**\s*" + _NUMBER, re.I),
          re.compile(r"^\s*" + _NUMBER + r"\s*(?:/\s*10)?\s*\.?\s*$")]
_YES_NO = [re.compile(r"\[\[\s*(yes|no)\s*\]\]", re.I),
           re.compile(r"(?:verdict|answer)\s*[:=]\s*\**\s*(yes|no)\b", re.I),
           re.compile(r"^\s*(yes|no)\b", re.I)]
_PAIR = [re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.I),
         re.compile(r"(?:verdict|winner|better)\s*[:=]\s*\**\s*(?:response\s+)?(A|B|tie)\b", re.I),
         re.compile(r"^\s*(A|B)\s*\.?\s*$")]
PAIR_VALUE = {"a": 1.0, "b": 0.0, "c": 0.5, "tie": 0.5}


def _last(patterns: list[re.Pattern], text: str) -> str | None:
    for pattern in patterns:
        found = pattern.findall(text)
        if found:
            return found[-1]
    return None


def parse_score(text: str) -> float | None:
    found = _last(_SCORE, text)
    return float(found) if found is not None and 1 <= float(found) <= 10 else None


def parse_yes_no(text: str) -> float | None:
    found = _last(_YES_NO, text)
    return None if found is None else float(found.lower() == "yes")


def parse_pairwise(text: str) -> float | None:
    found = _last(_PAIR, text)
    return None if found is None else PAIR_VALUE[found.lower()]


def parse_json(text: str, key: str) -> float | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        value = json.loads(text[start:end + 1]).get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    except (json.JSONDecodeError, AttributeError):
        return None


def parse(parser: str, text: str, json_key: str = "score") -> float | None:
    if parser == "json":
        return parse_json(text, json_key)
    return {"score": parse_score, "yes_no": parse_yes_no, "pairwise": parse_pairwise}[parser](text)


def unit_value(parser: str, score: float | None) -> float:
    """A verdict on 0..1, as a reward: a 1..10 score maps linearly (1 -> 0, 10 -> 1); yes/no and pairwise
    already are; json numbers are taken as they are. No verdict counts 0 (and is reported as a failure)."""
    if score is None:
        return 0.0
    return (score - 1) / 9 if parser == "score" else score
