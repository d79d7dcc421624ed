"""``rayalign judge``: score a JSONL dataset with a judge, with a progress bar, into a JSONL copy of it.

Input rows: ``prompt`` (text or a message list), ``response`` (or ``completion``), optional ``reference``
(or ``answer``); pairwise judges read ``response_a`` and ``response_b``. Each output row is the input
row plus ``judge_score`` (null when no verdict), ``judge_raw``, ``judge_attempts`` and ``judge_error``.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from rayalign.data.sources import iter_dicts
from rayalign.errors import DataError, RunError
from rayalign.judge.judge import Judge, JudgeItem, Verdict
from rayalign.outputs import staged


def as_text(value: Any) -> str:
    """A message list as "role: content" lines; text as it is."""
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in value)
    return str(value)


def to_item(row: dict, pairwise: bool, where: str) -> JudgeItem:
    def get(*keys: str, required: bool = True) -> str | None:
        for key in keys:
            if row.get(key) is not None:
                return as_text(row[key])
        if required:
            raise DataError(f"{where}: field '{keys[0]}' is missing")
        return None

    reference = get("reference", "answer", required=False)
    if pairwise:
        return JudgeItem(prompt=get("prompt"), response_a=get("response_a"), response_b=get("response_b"),
                         reference=reference)
    return JudgeItem(prompt=get("prompt"), response=get("response", "completion"), reference=reference)


def read_items(path: Path, pairwise: bool) -> tuple[list[dict], list[JudgeItem]]:
    rows, items = [], []
    for where, row in iter_dicts(str(path)):
        rows.append(row)
        items.append(to_item(row, pairwise, where))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows, items


def score_file(judge: Judge, source: Path, target: Path, echo: Callable[[str], None]) -> None:
    rows, items = read_items(source, judge.parser == "pairwise")
    parsed = 0
    with tqdm(total=len(items), desc="judging", unit="row") as bar:
        def tick(v: Verdict) -> None:
            nonlocal parsed
            parsed += v.score is not None
            bar.update(1)
            bar.set_postfix(parsed=parsed)

        verdicts = judge.score(items, tick)
    with staged(target) as tmp, tmp.open("w") as f:
        for row, v in zip(rows, verdicts):
            f.write(json.dumps({**row, "judge_score": v.score, "judge_raw": v.raw, "judge_attempts": v.attempts,
                                "judge_error": v.error}) + "\n")
    scores = [v.score for v in verdicts if v.score is not None]
    mean = f"{statistics.fmean(scores):.3f}" if scores else "n/a"
    echo(f"{len(scores)}/{len(verdicts)} rows judged (mean {mean}, {sum(v.cached for v in verdicts)} from the "
         f"cache, {sum(v.attempts > 1 for v in verdicts)} needed a retry); wrote {target}")
    if verdicts and not scores:  # a run that produced nothing must not look like a success
        errors = Counter(v.error for v in verdicts if v.error)
        reason = f"; most common error: {errors.most_common(1)[0][0]}" if errors else ""
        raise RunError(f"no row was judged ({len(verdicts)} tried){reason}")
