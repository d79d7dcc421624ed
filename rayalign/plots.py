"""Pictures of a run, as PNGs: RL reward per step, preference-training loss and margin, a bar chart of
evaluation results. Shared by the quickstart demo and ``rayalign evaluate --compare --plot``.

matplotlib runs headless (Agg); every function takes rows already read (``metrics.read_metrics``) and a
path, and returns the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (short at the start), so step k uses steps <= k only."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def reward_curve(metrics: list[dict], path: Path, title: str, held_out: dict[int, float] | None = None,
                 baseline: float | None = None) -> Path:
    """Mean reward per RL step (faint) with its smoothed line, and the share of right answers among the
    step's samples when the task has answers; held-out accuracy at given steps as markers, and a constant
    answer's score as a dashed line."""
    plt = _pyplot()
    steps = [m["step"] for m in metrics]
    window = max(1, len(metrics) // 20)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, color, name in (("reward_mean", "tab:blue", "reward"), ("accuracy", "tab:orange", "sample accuracy")):
        values = [m[key] for m in metrics if key in m]
        if len(values) == len(steps):
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, smooth(values, window), color=color, linewidth=2, label=f"{name} (smoothed)")
    if held_out:
        ax.plot(list(held_out), list(held_out.values()), "o-", color="tab:green", label="held-out greedy accuracy")
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", label="best constant answer")
    top = max([1.0] + [m["reward_mean"] for m in metrics])
    ax.set(xlabel="step", ylim=(min(0.0, *(m["reward_mean"] for m in metrics)), top * 1.05), title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def preference_curves(metrics: list[dict], path: Path, title: str) -> Path:
    """Preference loss and the chosen - rejected reward margin per step, raw and smoothed."""
    plt = _pyplot()
    steps = [m["step"] for m in metrics]
    window = max(1, len(metrics) // 20)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, name in ((axes[0], "loss", "loss"), (axes[1], "rewards/margins", "reward margin")):
        values = [m.get(key, float("nan")) for m in metrics]
        ax.plot(steps, values, alpha=0.25, color="tab:purple")
        ax.plot(steps, smooth(values, window), color="tab:purple", linewidth=2)
        ax.set(xlabel="step", title=name)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def results_bars(table: dict[str, dict[str, float]], keys: Sequence[str], path: Path, title: str,
                 baseline: float | None = None) -> Path:
    """Grouped bars: one group per row of ``table`` (a model), one bar per metric in ``keys``."""
    plt = _pyplot()
    names = list(table)
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4))
    for j, key in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(names))]
        values = [table[n].get(key, 0.0) or 0.0 for n in names]
        bars = ax.bar(xs, values, width, label=key.replace("_", " "))
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in values], fontsize=7)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", label="best constant answer")
    ax.set_xticks(range(len(names)), names)
    ax.set(ylim=(0, 1.1), title=title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
