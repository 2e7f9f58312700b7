"""The search as a person follows it: one line per trial event and a progress line, from Tune's callbacks.

Lines go through :func:`runner.console.say`: to the terminal, while Ray's own tables and the
workers' output go to the search's log file. A trial's events:

    trial 3a5b0e74 started: data.features=['i3d'], train.lr=0.002528, ...
    trial 3a5b0e74 epoch 6/12: average_mAP 16.1
    trial 3a5b0e74 stopped by ASHA after epoch 6 (best average_mAP 16.1)
    trial 3a5b0e74 finished: best average_mAP 28.14 at epoch 12
    trial 3a5b0e74 failed: TrainingDiverged: loss became nan at epoch 1, step 1
    progress: 3/8 trials, best average_mAP 28.14 (trial 3a5b0e74), 1m15s elapsed, ETA 2m05s
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Callback

from runner.console import Progress, compact, say
from runner.names import REPEAT_OF
from runner.searchfile.spec import validation_metrics
from runner.tune.recorder import trial_end
from runner.tune.trial import PLANNED_EPOCHS_KEY, TrialSetup
from runner.tune.trial_results import failure_reason


class TrialProgress(Callback):
    """Says what happens to each trial; holds no stream, so the Tuner can pickle it with its state."""

    def __init__(self, setup: TrialSetup, total: int) -> None:
        self.trial_setup = setup
        self.metric = setup.spec.search.metric
        self.sign = 1.0 if setup.spec.search.mode == "max" else -1.0
        self.scheduler = setup.spec.search.scheduler.type.upper()
        # a validation metric is new only on evaluated epochs; a loss, every epoch
        self.every_epoch = self.metric not in validation_metrics(setup.spec.base)
        self.progress = Progress(total)
        self.best: tuple[float, str] | None = None  # (value, trial id) over every evaluation
        self.trial_best: dict[str, tuple[float, int]] = {}  # trial id -> (value, epoch)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        values = ", ".join(f"{k}={compact(v)}" for k, v in trial.config.items() if k != REPEAT_OF)
        repeat = f" (repeat of trial {trial.config[REPEAT_OF]})" if REPEAT_OF in trial.config else ""
        say(f"trial {trial.trial_id} started{repeat}: {values}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.metric not in result or not (result.get("evaluated") or self.every_epoch):
            return
        value = float(result[self.metric])
        planned = result.get(PLANNED_EPOCHS_KEY, "?")
        say(f"trial {trial.trial_id} epoch {result['epoch']}/{planned}: {self.metric} {compact(value)}")
        if not math.isfinite(value):
            return
        if self.best is None or self.sign * value > self.sign * self.best[0]:
            self.best = (value, trial.trial_id)
        mine = self.trial_best.get(trial.trial_id)
        if mine is None or self.sign * value >= self.sign * mine[0]:  # ties: the later epoch, as the recorder
            self.trial_best[trial.trial_id] = (value, int(result["epoch"]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        status, reason = trial_end(self.trial_setup, trial)
        result = trial.last_result or {}
        mine = self.trial_best.get(trial.trial_id)
        best = f"best {self.metric} {compact(mine[0])} at epoch {mine[1]}" if mine else f"no {self.metric} measured"
        if status == "failed":
            say(f"trial {trial.trial_id} failed: {reason}")
        elif status == "pruned":
            say(f"trial {trial.trial_id} stopped by {self.scheduler} after epoch {result.get('epoch')} ({best})")
        else:
            say(f"trial {trial.trial_id} finished: {best}")
        self._advance()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        say(f"trial {trial.trial_id} failed: {failure_reason(trial)}")
        self._advance()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        say(f"trial {trial.trial_id} retried from its last checkpoint: {failure_reason(trial)}")

    def _advance(self) -> None:
        self.progress.advance()
        best = f", best {self.metric} {compact(self.best[0])} (trial {self.best[1]})" if self.best else ""
        say(self.progress.line("trials", best))
