"""A reward model's verdicts: ``rayalign evaluate``'s ``reward_model`` task (the subject's answers scored,
and a win rate against a baseline model's), and ``rayalign score`` (a JSONL file scored row by row).

``rayalign score`` reads ``prompt`` plus ``response`` (or ``completion``) rows and adds ``reward_score``;
preference rows (``prompt``, ``chosen``, ``rejected``) get ``reward_chosen`` and ``reward_rejected``, and
the summary gives the pair accuracy (the share of rows whose chosen side scores higher): a reward model's
held-out accuracy in one command."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from rayalign.data.sources import iter_dicts
from rayalign.errors import DataError
from rayalign.models.scoring import ScoreModel
from rayalign.outputs import staged

CHUNK = 256  # rows per progress-bar tick


def scored(model: ScoreModel, pairs: list[tuple[Any, Any]], desc: str) -> list[float]:
    out: list[float] = []
    for start in tqdm(range(0, len(pairs), CHUNK), desc=desc, unit="chunk", disable=len(pairs) <= CHUNK):
        out += model.score(pairs[start:start + CHUNK])
    return out


def task_scores(model: ScoreModel, prompts: list, answers: list[str], baseline: list[str] | None) -> dict[str, float]:
    """Mean and std of the answers' scores; with ``baseline`` answers, theirs and the win rate (ties half)."""
    mine = scored(model, list(zip(prompts, answers)), "reward model")
    out = {"reward_score": statistics.fmean(mine), "reward_score_std": statistics.pstdev(mine), "n": len(mine)}
    if baseline is not None:
        theirs = scored(model, list(zip(prompts, baseline)), "reward model (baseline)")
        out["baseline_reward_score"] = statistics.fmean(theirs)
        out["win_rate"] = statistics.fmean(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(mine, theirs))
    return out


def _field(row: dict, where: str, *keys: str) -> Any:
    for key in keys:
        if row.get(key) is not None:
            return row[key]
    raise DataError(f"{where}: field '{keys[0]}' is missing (a row needs prompt and response, or prompt, chosen "
                    "and rejected)")


def score_file(load: Callable[[], ScoreModel], source: Path, target: Path,
               echo: Callable[[str], None]) -> dict[str, float]:
    """Every row of ``source`` with its score(s) into ``target`` by the model ``load`` gives (after the rows
    are read and checked); returns the summary it prints."""
    rows = [(where, row) for where, row in iter_dicts(str(source))]
    if not rows:
        raise DataError(f"{source}: no rows")
    paired = "chosen" in rows[0][1]
    sides = ("chosen", "rejected") if paired else ("response",)
    pairs = [(_field(row, where, "prompt"), _field(row, where, side, *(("completion",) if side == "response" else ())))
             for where, row in rows for side in sides]
    values = scored(load(), pairs, "scoring")
    with staged(target) as tmp, tmp.open("w") as f:
        for k, (_, row) in enumerate(rows):
            keys = [f"reward_{side}" for side in sides] if paired else ["reward_score"]
            f.write(json.dumps({**row, **dict(zip(keys, values[k * len(sides):(k + 1) * len(sides)]))}) + "\n")
    summary = {"rows": float(len(rows)), "mean": statistics.fmean(values)}
    if paired:
        summary["pair_accuracy"] = statistics.fmean(float(c > r) for c, r in zip(values[::2], values[1::2]))
    echo(f"{len(rows)} rows scored (mean score {summary['mean']:.4f}"
         + (f", pair accuracy {summary['pair_accuracy']:.4f}: chosen scored above rejected" if paired else "")
         + f"); wrote {target}")
    return summary
