"""Post-processing searched without retraining: a small seeded Optuna study at every evaluation.

Post-processing never touches the weights, so a trial with ``search.postprocess`` runs its model
once per evaluation and lets :class:`PostprocessSearch` pick the ``test.*`` settings on the raw
candidates (``SubsetScorer``: the videos the trial is scored on, the held-out slice under
``search.selection``, never the training videos). The study is seeded, so the same candidates
give the same settings; it starts from the best settings so far (the file's own, then the last
evaluation's choice), so its pick never scores below them. The trial reports the mAP of the pick.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import optuna

from localization.api import TestConfig, metrics_as_floats
from runner.searchfile.space import Param
from runner.searchfile.spec import PostprocessSpec

if TYPE_CHECKING:  # torch is imported in trial workers only
    from localization.api import SubsetScorer

KEY_PREFIX = "test."


class PostprocessSearch:
    """``choose_test`` for the training loop: settings chosen at each evaluation, and what it cost."""

    def __init__(self, spec: PostprocessSpec, base: TestConfig, metric: str, mode: str, seed: int) -> None:
        self.spec = spec
        self.base = base
        self.metric = metric
        self.direction = "maximize" if mode == "max" else "minimize"
        self.seed = seed
        self.chosen: dict[str, Any] = {}  # {test.key: value} of the last evaluation
        self.seconds = 0.0  # the last evaluation's inner search

    def restore(self, chosen: dict[str, Any]) -> None:
        """Continue after a resume from the settings the checkpoint's evaluation chose."""
        self.chosen = dict(chosen)

    def __call__(self, scorer: SubsetScorer) -> TestConfig:
        started = time.perf_counter()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=max(2, self.spec.trials // 4))
        study = optuna.create_study(direction=self.direction, sampler=sampler)
        for start in self._warm_starts():
            study.enqueue_trial(start, skip_if_exists=True)
        tried: dict[int, dict[str, Any]] = {}

        def objective(trial: optuna.Trial) -> float:
            values = self.spec.space(trial)
            tried[trial.number] = values
            metrics = scorer.metrics(self.settings(values))
            if metrics is None:
                raise ValueError("search.postprocess: the scored subset has no labelled instances")
            return metrics_as_floats(metrics)[self.metric]

        study.optimize(objective, n_trials=self.spec.trials)
        self.chosen = tried[study.best_trial.number]
        self.seconds = time.perf_counter() - started
        return self.settings(self.chosen)

    def settings(self, values: dict[str, Any]) -> TestConfig:
        """The base post-processing with ``{test.key: value}`` set."""
        return dataclasses.replace(self.base, **{key.removeprefix(KEY_PREFIX): v for key, v in values.items()})

    def _warm_starts(self) -> list[dict[str, Any]]:
        """The file's own settings, then the last choice: enqueued first (values outside the
        searched range are left for the sampler)."""
        base = {p.key: getattr(self.base, p.key.removeprefix(KEY_PREFIX)) for p in self.spec.space.params}
        starts = [base] + ([self.chosen] if self.chosen and self.chosen != base else [])
        params = {p.key: p for p in self.spec.space.params}
        return [{k: v for k, v in start.items() if k in params and _inside(params[k], v)} for start in starts]


def _inside(param: Param, value: Any) -> bool:
    """Whether ``value`` lies in the parameter's distribution (an enqueued value outside it would
    be tried anyway, outside the space the file asked for)."""
    if param.kind in ("uniform", "loguniform"):
        return isinstance(value, (int, float)) and param.low <= value <= param.high
    return param.allows(value)
