"""``rayalign evaluate -c eval.yaml``: every task of the config on one model, a table on the console and
``OUTPUT_DIR/results.json``; ``--compare A B`` prints two results side by side.

An evaluation in which no task scored a single example (every judge verdict unparsed, say) writes its
results and then fails (:class:`RunError`, exit 1): a run that measured nothing must not look like a success.

The model is loaded at most twice, each lazily: as a generation engine (``engine``: vLLM or HF) for the
generate, judge and reward-model tasks, and as an HF model for the log-likelihood tasks (multiple choice,
perplexity). A judge or reward-model task's baseline model gets its own engine, closed after its answers.
A reward model is loaded in this process for its task; a local judge runs as its own Ray Serve app for the
evaluation and is deleted after it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from rayalign.config import EvalConfig, EvalTaskConfig, JudgeConfig, ModelConfig
from rayalign.config_io import load_config
from rayalign.engines.base import GenerationEngine
from rayalign.engines.build import build_engine
from rayalign.errors import RunError, UserError
from rayalign.evaluate import generative, loglik, reward_model
from rayalign.judge.judge import Judge
from rayalign.judge.service import endpoint, release
from rayalign.models.loading import load_model, load_tokenizer
from rayalign.models.scoring import ScoreModel
from rayalign.models.vlm import is_vlm, load_processor
from rayalign.outputs import staged, write_text

RESULTS = "results.json"


class Subject:
    """The model under evaluation, as an engine and as an HF model, each built on first use."""

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        # a vision-language model's processor: it tokenises like the tokenizer and also takes images
        self.tokenizer = load_processor(cfg.model) if is_vlm(cfg.model) else load_tokenizer(cfg.model)
        self._engine: GenerationEngine | None = None
        self._hf = None

    def engine(self) -> GenerationEngine:
        if self._engine is None:
            self._engine = engine_for(self.cfg, self.cfg.model)
        return self._engine

    def hf(self):
        if self._hf is None:
            self._hf = load_model(self.cfg.model, apply_lora=False).eval()
        return self._hf

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def engine_for(cfg: EvalConfig, model: ModelConfig) -> GenerationEngine:
    return build_engine(cfg.engine, model, max_model_len=cfg.max_model_len)


def run_task(subject: Subject, task: EvalTaskConfig) -> dict[str, float]:
    cfg = subject.cfg
    if task.kind == "generate":
        return generative.verifiable(subject.engine(), subject.tokenizer, task, cfg.temperature)
    if task.kind == "multiple_choice":
        rows = loglik.read_mc(Path(task.path) if task.path else loglik.BUILTIN_MC, task.num_samples)
        return loglik.multiple_choice(subject.hf(), subject.tokenizer, rows, cfg.batch_size)
    if task.kind == "perplexity":
        return loglik.perplexity(subject.hf(), subject.tokenizer, Path(task.path), cfg.max_model_len,
                                 cfg.batch_size, task.num_samples)
    if task.kind == "reward_model":
        return reward_model_task(subject, task)
    return judge_task(subject, task)


def _answers(subject: Subject, task: EvalTaskConfig) -> tuple[list, list[str], list[str] | None]:
    """(prompts, the subject's answers, the baseline model's answers or None) for a judge-style task."""
    cfg = subject.cfg
    prompts = generative.judge_prompts(task)
    answers = generative.answers(subject.engine(), subject.tokenizer, prompts, task.max_new_tokens, cfg.temperature)
    baseline = None
    if task.baseline is not None:
        other = engine_for(cfg, task.baseline)
        try:
            baseline = generative.answers(other, load_tokenizer(task.baseline), prompts, task.max_new_tokens,
                                           cfg.temperature)
        finally:
            other.close()
    return prompts, answers, baseline


def reward_model_task(subject: Subject, task: EvalTaskConfig) -> dict[str, float]:
    assert task.reward_model is not None  # config validation
    model = ScoreModel(task.reward_model, max_length=subject.cfg.max_model_len, batch_size=subject.cfg.batch_size,
                       where=f"tasks.{task.name}.reward_model")  # a wrong path fails before any generation
    prompts, answers, baseline = _answers(subject, task)
    return reward_model.task_scores(model, prompts, answers, baseline)


def judge_task(subject: Subject, task: EvalTaskConfig) -> dict[str, float]:
    judge_cfg = load_config(task.judge, kind=JudgeConfig)
    prompts, answers, baseline = _answers(subject, task)
    try:
        return generative.judged(Judge(judge_cfg, endpoint(judge_cfg)), prompts, answers, baseline)
    finally:
        release(judge_cfg)


def evaluate(cfg: EvalConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    subject = Subject(cfg)
    results: dict[str, Any] = {"model": cfg.model.name_or_path, "tasks": {}}
    try:
        for task in tqdm(cfg.tasks, desc="evaluating", unit="task"):
            start = time.perf_counter()
            metrics = run_task(subject, task)
            results["tasks"][task.name] = {"kind": task.kind, **metrics,
                                           "seconds": round(time.perf_counter() - start, 2)}
    finally:
        subject.close()
    target = write_text(results_path(cfg), json.dumps(results, indent=2) + "\n")
    echo(table(results))
    echo(f"wrote {target}")
    _refuse_empty(results, echo)
    return results


def results_path(cfg: EvalConfig) -> Path:
    return Path(cfg.output_dir) / RESULTS


SCORES = ("accuracy", "perplexity", "judge_score", "win_rate", "reward_score")  # one per kind; NaN when nothing was scored


def unscored(results: dict) -> list[str]:
    """The tasks that scored no example: none of their scores is a number (a judge that parsed no verdict)."""
    return [name for name, metrics in results["tasks"].items()
            if not any(_number(metrics.get(k)) and not math.isnan(metrics[k]) for k in SCORES)]


def _refuse_empty(results: dict, echo: Callable[[str], None]) -> None:
    """Fail when every task scored nothing (the results are written already); warn when some did."""
    tasks = results["tasks"]
    empty = [name + (f" ({tasks[name]['unparsed']} of {tasks[name].get('n')} verdicts unparsed)"
                     if "unparsed" in tasks[name] else "") for name in unscored(results)]
    if empty and len(empty) == len(tasks):
        raise RunError(f"no task scored an example: {', '.join(empty)}")
    for task in empty:
        echo(f"warning: task {task} scored no example")


HEADLINE = ("accuracy", "best_constant", "sampled_accuracy", "format_rate", "mean_answer_tokens", "accuracy_norm",
            "perplexity", "judge_score", "win_rate", "reward_score", "baseline_reward_score")


def read_results(path: Path) -> dict:
    """A ``results.json`` written by ``evaluate``, for ``--compare``; anything else is one line naming it."""
    if path.is_dir():
        raise UserError(f"{path}: a directory, not a results file (give its {RESULTS})")
    if not path.is_file():
        raise UserError(f"{path}: results file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a results file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not a results file (invalid JSON: {exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not (isinstance(data, dict) and isinstance(data.get("model"), str) and isinstance(data.get("tasks"), dict)
            and all(isinstance(m, dict) for m in data["tasks"].values())):
        raise UserError(f"{path}: not a results file of 'rayalign evaluate' (needs 'model' and 'tasks': "
                        "{task: {metric: value}})")
    return data


def _rows(results: dict) -> dict[tuple[str, str], float]:
    rows = {}
    for name, metrics in results["tasks"].items():
        for key, value in metrics.items():
            if key in HEADLINE or key in ("n", "tokens", "unparsed"):
                rows[name, key] = value
            elif key == "accuracy_by_answer" and isinstance(value, dict):
                rows.update({(name, f"accuracy[{answer}]"): v for answer, v in value.items()})
    return rows


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table(results: dict) -> str:
    lines = [f"model: {results['model']}", f"{'task':<24} {'metric':<20} {'value':>10}"]
    lines += [f"{task:<24} {metric:<20} {_fmt(value):>10}" for (task, metric), value in _rows(results).items()]
    return "\n".join(lines)


def compare(a: dict, b: dict) -> str:
    ra, rb = _rows(a), _rows(b)
    lines = [f"A: {a['model']}", f"B: {b['model']}",
             f"{'task':<24} {'metric':<20} {'A':>10} {'B':>10} {'B - A':>10}"]
    for key in list(ra) + [k for k in rb if k not in ra]:
        va, vb = ra.get(key), rb.get(key)
        delta = vb - va if _number(va) and _number(vb) else None
        lines.append(f"{key[0]:<24} {key[1]:<20} {_fmt(va):>10} {_fmt(vb):>10} {_fmt(delta):>10}")
    return "\n".join(lines)


SHARES = ("accuracy", "sampled_accuracy", "best_constant", "format_rate", "accuracy_norm", "win_rate")


def plot_shares(results: list[dict], path: Path) -> Path:
    """The metrics that are shares (0-1) of each results file as grouped bars, one group per model."""
    from rayalign.plots import results_bars

    rows = [{f"{task}: {key}": value for (task, key), value in _rows(r).items()
             if key in SHARES and _number(value)} for r in results]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    if not keys:
        raise UserError("--plot: the results hold no accuracy, format rate or win rate to draw")
    labels = [f"{chr(65 + i)}: {'/'.join(Path(r['model']).parts[-2:])}" for i, r in enumerate(results)]
    with staged(path) as tmp:
        results_bars(dict(zip(labels, rows)), keys, tmp, "evaluation results")
    return path
