"""Ray's ``OptunaSearch``, told the truth about multi-fidelity trials.

Ray 2.60's ``OptunaSearch`` reports every result as an intermediate value at Ray's iteration
count and, on completion, tells Optuna COMPLETE with the last value whenever the result holds the
metric: a trial that ASHA stopped at epoch 6 reads as finished with its epoch-6 mAP, and an
errored trial with a metric reads as COMPLETE too. Here instead:

- intermediate values are the metric at the epochs that measured it (``step`` = epoch), once;
- a trial that reached its last planned epoch is COMPLETE with its best measured value;
- a trial stopped earlier (by the scheduler) is PRUNED, carrying its intermediate values, which
  is how TPE ranks pruned trials (by how far they got, then by their last value);
- a trial that errored, or diverged (runner.tune.diverged), is FAIL.

Seed configs are queued in the study (``enqueue_trial``) before anything is sampled. The whole
object, study included, is pickled by Ray into ``searcher-state-*.pkl`` in the experiment folder
and restored by ``--resume`` (see :func:`load_saved_search`).
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from runner.tune.trial import PLANNED_EPOCHS_KEY, SCORE_KEY, diverged

STATE_GLOB = "searcher-state-*.pkl"  # Ray's Searcher.CKPT_FILE_TMPL


class MultiFidelityOptunaSearch(OptunaSearch):
    """OptunaSearch with honest PRUNED/COMPLETE/FAIL states and queued seed configs."""

    def __init__(
        self,
        space: Any,
        metric: str,
        mode: str,
        sampler: optuna.samplers.BaseSampler,
        seed_params: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(space=space, metric=metric, mode=mode, sampler=sampler)
        for params in seed_params or []:
            self._ot_study.enqueue_trial(params)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials:
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result and not error:  # the scheduler's STOP result never went through on_trial_result
            self._report(trial_id, result)
        ot_trial = self._ot_trials[trial_id]
        measured = [v for v in self._frozen(ot_trial).intermediate_values.values() if math.isfinite(v)]
        # a diverged trial's terminal report has neither: it is not at its end (and fails below)
        reached_end = bool(result) and result.get("epoch", 0) >= result.get(PLANNED_EPOCHS_KEY, math.inf)
        if error or diverged(result) is not None or (reached_end and not measured):
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        elif reached_end:
            best = max(measured) if self._mode == "max" else min(measured)
            self._ot_study.tell(ot_trial, best, state=TrialState.COMPLETE)
        else:
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def _report(self, trial_id: str, result: dict) -> None:
        """The metric as the intermediate value at its epoch, when this epoch measured it.

        Epochs already reported (a retried or resumed trial reports them again) are skipped.
        """
        if trial_id not in self._ot_trials or not math.isfinite(result.get(SCORE_KEY, -math.inf)):
            return
        ot_trial = self._ot_trials[trial_id]
        step = int(result["epoch"])
        if step not in self._frozen(ot_trial).intermediate_values:
            ot_trial.report(float(result[self._metric]), step)

    def _frozen(self, ot_trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        return next(t for t in self._ot_study.get_trials(deepcopy=False) if t.number == ot_trial.number)


@dataclass
class SavedSearch:
    """What Ray saved of the searcher: the Optuna study and which Optuna trial each Ray trial is."""

    study: optuna.Study
    trial_numbers: dict[str, int]  # Ray trial id -> Optuna trial number


def load_saved_search(ray_path: Path) -> SavedSearch | None:
    """The searcher state Ray saved with the experiment at `ray_path`, if any.

    Each session (the first run, every ``--resume``) writes its own file named by its start time;
    the newest session's is the one that counts. File times do not tell: Ray syncs the files of
    earlier sessions back into the folder at the end of a resumed run.
    """
    states = sorted(ray_path.glob(STATE_GLOB))
    if not states:
        return None
    with states[-1].open("rb") as handle:
        saved = pickle.load(handle)  # this searcher's own __dict__, pickled by Ray's Searcher.save
    return SavedSearch(saved["_ot_study"], {tid: t.number for tid, t in saved["_ot_trials"].items()})
