"""What mattered: hyperparameter importance of the searched keys over the search's finished trials.

Optuna's PED-ANOVA (no extra dependency, usable from two trials on) over the COMPLETE trials of the
study Ray saved with the experiment. Pruned trials are left out: their values come from shorter
training, and mixing fidelities is what the searcher avoids (runner.tune.searcher). Keys with a fixed
value (``{value: x}``) are never sampled and do not appear.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt
import optuna
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState

METHOD = "optuna PED-ANOVA"
JSON_FILE, PLOT_FILE = "param_importance.json", "param_importance.png"
MIN_TRIALS = 2


@dataclass
class Importance:
    method: str
    trials: int  # finished (COMPLETE) trials it was computed over
    importances: dict[str, float]  # searched key -> share of the variation, summing to about 1

    def summary(self) -> str:
        """One console line, most important first."""
        shown = ", ".join(f"{key} {value:.2f}" for key, value in self.importances.items())
        return f"what mattered ({self.method} over {self.trials} finished trials): {shown}"


def param_importance(study: optuna.Study) -> Importance | None:
    """Importance over the COMPLETE trials; None when fewer than two finished or nothing varied."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(finished) < MIN_TRIALS or not any(t.params for t in finished):
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    values = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    return Importance(METHOD, len(finished), {key: float(value) for key, value in values.items()})


def write(importance: Importance, out_dir: Path) -> list[Path]:
    """``param_importance.json`` and a horizontal bar chart ``param_importance.png`` in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / JSON_FILE
    data.write_text(json.dumps(asdict(importance), indent=2) + "\n")
    keys = list(importance.importances)[::-1]  # most important on top
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(keys) + 1.5))
    ax.barh(keys, [importance.importances[k] for k in keys], color="tab:blue")
    ax.set(xlabel="importance", title=f"{importance.method}, {importance.trials} finished trials")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    plot = out_dir / PLOT_FILE
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    return [data, plot]
