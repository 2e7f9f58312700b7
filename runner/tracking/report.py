"""The search's summary, read back from MLflow: leaderboard (CSV, markdown) and plots.

Everything here reads the child runs the recorder wrote, so the printed best value is the one
stored on the best child run, by construction.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from runner.names import BEST_EPOCH, REPEAT_OF, SEARCHED_KEYS, STATUS, TRIAL_ID, best_metric
from runner.searchfile.space import SearchSpace

STATUS_COLORS = {
    "finished": "tab:blue",
    "pruned": "tab:orange",
    "failed": "tab:red",
    "interrupted": "tab:gray",
    "running": "tab:green",
}


@dataclass
class TrialRow:
    """One child run as the leaderboard sees it."""

    order: int  # 1-based, in start order
    name: str
    trial_id: str
    run_id: str
    status: str
    best: float  # NaN when never evaluated
    best_epoch: int | None
    epochs: int  # epochs logged
    train_time_s: float  # sum of the training loop's epoch times
    values: dict[str, Any]  # searched key -> value, for the keys active in this trial
    curve: list[tuple[int, float]]  # (epoch, metric) on evaluated epochs
    repeat_of: str | None = None  # search.repeat_top: the trial id whose config this run re-trains


def collect(client: Any, runs: list[Any], metric: str) -> list[TrialRow]:
    """Rows for the child runs (``runs`` oldest first), with their metric histories."""
    rows = []
    for order, run in enumerate(runs, start=1):
        tags, run_id = run.data.tags, run.info.run_id
        history = client.get_metric_history(run_id, metric)
        times = client.get_metric_history(run_id, "epoch_time_s")
        keys = [k for k in tags.get(SEARCHED_KEYS, "").split(",") if k]
        rows.append(
            TrialRow(
                order=order,
                name=run.info.run_name,
                trial_id=tags.get(TRIAL_ID, ""),
                run_id=run_id,
                status=tags.get(STATUS, "unknown"),
                best=float(run.data.metrics.get(best_metric(metric), math.nan)),
                best_epoch=int(tags[BEST_EPOCH]) if BEST_EPOCH in tags else None,
                epochs=max((m.step for m in times), default=0),
                train_time_s=sum(m.value for m in times),
                # a run whose driver was killed right after creating it may lack its params
                values={k: _param_value(run.data.params[k]) for k in keys if k in run.data.params},
                curve=sorted((m.step, m.value) for m in history),
                repeat_of=tags.get(REPEAT_OF),
            )
        )
    return rows


def best_row(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The best evaluated trial (ties: the earliest); with search.repeat_top repeats, the repeated
    trial whose config has the best mean over its seeds, as runner.promote picks it."""
    scored = [r for r in rows if math.isfinite(r.best)]
    if not scored:
        return None
    sign = 1.0 if mode == "max" else -1.0
    groups = repeat_scores([(r.trial_id, r.repeat_of, r.best) for r in rows])
    if groups:
        repeated = [r for r in scored if r.trial_id in groups]
        return max(repeated, key=lambda r: (sign * mean_and_spread(groups[r.trial_id])[0], -r.order))
    return max(scored, key=lambda r: (sign * r.best, -r.order))


def repeat_scores(runs: list[tuple[str, str | None, float]]) -> dict[str, list[float]]:
    """Repeated trial id -> the scores of its config: its own, then its repeats' (search.repeat_top).

    ``runs`` are (trial id, repeated trial id or None, best metric) triples; only trials that were
    repeated appear, and NaN scores (never evaluated) are left out.
    """
    own = {trial_id: best for trial_id, repeat_of, best in runs if repeat_of is None}
    groups: dict[str, list[float]] = {}
    for _, repeat_of, best in runs:
        if repeat_of is not None and repeat_of in own:
            groups.setdefault(repeat_of, [own[repeat_of]]).append(best)
    return {k: [v for v in scores if math.isfinite(v)] for k, scores in groups.items()}


def mean_and_spread(scores: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for fewer than two scores)."""
    if not scores:
        return math.nan, math.nan
    mean = sum(scores) / len(scores)
    if len(scores) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in scores) / (len(scores) - 1))


def leaderboard(rows: list[TrialRow], space: SearchSpace, metric: str, mode: str) -> pd.DataFrame:
    """Trials ranked by their best metric (unevaluated ones last); with search.repeat_top, each
    repeated config's mean and spread over its seeds, and which trial a repeat re-trains."""
    groups = repeat_scores([(r.trial_id, r.repeat_of, r.best) for r in rows])
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted(
        rows, key=lambda r: (not math.isfinite(r.best), sign * r.best if math.isfinite(r.best) else 0.0, r.order)
    )
    records = []
    for rank, row in enumerate(ranked, start=1):
        record = {
            "rank": rank,
            "trial": row.name,
            "status": row.status,
            best_metric(metric): row.best,
            "best_epoch": row.best_epoch,
            "epochs": row.epochs,
            "train_time_s": round(row.train_time_s, 1),
        }
        record.update({key: _show(row.values[key]) if key in row.values else "-" for key in space.keys})
        if groups:
            mean, spread = mean_and_spread(groups.get(row.trial_id, []))
            record.update({f"mean_{metric}": mean, "spread": spread, "seeds": len(groups.get(row.trial_id, []))})
            record["repeat_of"] = row.repeat_of or "-"
        record["run_id"] = row.run_id
        records.append(record)
    return pd.DataFrame.from_records(records)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no extra dependency such as tabulate)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.4g}"
        return "-" if value is None else str(value).replace("|", "\\|")

    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def plot_all(rows: list[TrialRow], space: SearchSpace, metric: str, mode: str, out_dir: Path) -> list[Path]:
    """metric_by_trial.png, learning_curves.png and param_<key>.png per searched key."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        _plot_by_trial(rows, metric, mode, out_dir / "metric_by_trial.png"),
        _plot_curves(rows, metric, out_dir / "learning_curves.png"),
    ]
    for param in space.params:
        if param.kind != "value":
            paths.append(_plot_param(rows, param, metric, out_dir / f"param_{param.key}.png"))
    return paths


def _plot_by_trial(rows: list[TrialRow], metric: str, mode: str, path: Path) -> Path:
    """Each trial's best metric in start order, coloured by status, with the best-so-far line."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for status, color in STATUS_COLORS.items():
        picked = [r for r in rows if r.status == status and math.isfinite(r.best)]
        if picked:
            ax.scatter([r.order for r in picked], [r.best for r in picked], color=color, label=status, zorder=3)
    running, best_so_far = [], math.nan
    pick = max if mode == "max" else min
    for row in rows:
        if math.isfinite(row.best):
            best_so_far = row.best if math.isnan(best_so_far) else pick(best_so_far, row.best)
        running.append(best_so_far)
    ax.step([r.order for r in rows], running, where="post", color="black", lw=1.2, label="best so far")
    ax.set(xlabel="trial (start order)", ylabel=f"best {metric}", title=f"{metric} per trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_curves(rows: list[TrialRow], metric: str, path: Path) -> Path:
    """Validation metric per epoch for every trial: where the scheduler cut trials short."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        if row.curve:
            epochs, values = zip(*row.curve, strict=True)
            ax.plot(epochs, values, marker=".", color=STATUS_COLORS.get(row.status, "black"), alpha=0.7)
    handles = [
        plt.Line2D([], [], color=c, label=s) for s, c in STATUS_COLORS.items() if any(r.status == s for r in rows)
    ]
    ax.set(xlabel="epoch", ylabel=metric, title=f"validation {metric} per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if handles:
        ax.legend(handles=handles, fontsize=8)
    return _save(fig, path)


def _plot_param(rows: list[TrialRow], param: Any, metric: str, path: Path) -> Path:
    """Scatter for a numeric parameter (log axis when log-scaled), box + points per choice.

    Points are coloured by status: a pruned trial's best comes from a shortened training.
    """
    points = [
        (r.values[param.key], r.best, STATUS_COLORS.get(r.status, "black"))
        for r in rows
        if param.key in r.values and math.isfinite(r.best)
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    if param.kind == "choice":
        labels = [_show(c) for c in param.choices]
        groups = [[(b, c) for v, b, c in points if _show(v) == label] for label in labels]
        ax.boxplot([[b for b, _ in g] if g else [math.nan] for g in groups], tick_labels=labels)
        for i, group in enumerate(groups, start=1):
            offsets = [(j - (len(group) - 1) / 2) * 0.04 for j in range(len(group))]
            ax.scatter([i + o for o in offsets], [b for b, _ in group], c=[c for _, c in group], zorder=3)
        ax.tick_params(axis="x", labelrotation=15)
    else:
        ax.scatter([float(v) for v, _, _ in points], [b for _, b, _ in points], c=[c for _, _, c in points])
        if param.kind == "loguniform" or param.log:
            ax.set_xscale("log")
    ax.set(xlabel=param.key, ylabel=f"best {metric}", title=f"effect of {param.key}")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _param_value(text: str | None) -> Any:
    """Undo the recorder's param encoding (JSON for non-strings, strings as they are)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _show(value: Any) -> str:
    """Compact text of a searched value for tables and axis labels."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)
