"""A diverged trial (NaN or infinite loss) fails once and is not retried.

Ray retries every error a trainable raises ``search.max_failures`` times from its last checkpoint
(Tune has no per-exception retry policy), and a diverged trial diverges again each time: that
costs a GPU as many runs. ``search.max_failures`` is for workers that died. So the trainable
(runner.tune.trial) catches the training loop's ``TrainingDiverged`` and ends with one terminal report: the
reason under ``DIVERGED_KEY`` and the search metric as NaN (Tune requires the metric in every
result). On the driver:

- :class:`StopDiverged` (the run's stopper) stops the trial on that report, before the scheduler
  or the searcher see it as a result; ASHA ignores it on completion (it has no ``epoch``);
- runner.tune.searcher tells Optuna the trial FAILED (Ray's ``OptunaSearch`` would tell it COMPLETE
  with NaN, which Optuna refuses, leaving the trial RUNNING in the study);
- the recorder (runner.tune.recorder) ends the trial's MLflow run FAILED with ``runner.failure``.

Ray itself records the trial as finished (TERMINATED), so ``--resume`` does not run it again either
(resume reruns errored trials, whose workers died ``max_failures + 1`` times).
"""

from __future__ import annotations

from typing import Any

from ray.tune import Stopper

from runner.tune.trial import diverged


class StopDiverged(Stopper):
    """Ends a trial on its divergence report; never stops the whole search."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return diverged(result) is not None

    def stop_all(self) -> bool:
        return False
