"""The Ray Tune Tuner of a search: Optuna's sampler behind runner.tune.searcher, a trial scheduler, checkpoints.

A new trial scheduler is one branch of :func:`make_scheduler` (and its name in
``runner.searchfile.spec.SchedulerSpec``); Ray is imported only when a Tuner is built.
"""

from __future__ import annotations

from typing import Any

from runner import console
from runner.searchfile.space import make_sampler
from runner.searchfile.spec import SearchFile
from runner.tune.recorder import TrialRecorder
from runner.tune.storage import Location
from runner.tune.trial import SCORE_KEY, TrialSetup, run_trial


def make_scheduler(spec: SearchFile) -> Any:
    """ASHA (stops weak trials at rungs of ``grace_period * reduction_factor^k`` epochs) or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = spec.search.scheduler
    # metric/mode go to OptunaSearch and TuneConfig, never the scheduler
    if s.type == "asha":
        return ASHAScheduler(
            time_attr="epoch", max_t=spec.max_epochs(), grace_period=s.grace_period, reduction_factor=s.reduction_factor
        )
    return FIFOScheduler()


def build_tuner(
    setup: TrialSetup,
    ray_path: Location,
    resources: dict[str, float],
    concurrency: int,
    recorder: TrialRecorder,
    resume: bool,
) -> Any:
    """The Tuner: Optuna (seeded sampler, define-by-run space, seed configs first), ASHA or FIFO, checkpoints."""
    from ray import tune  # Ray is imported only when a search runs

    from runner.tune import snapshot
    from runner.tune.searcher import MultiFidelityOptunaSearch

    spec = setup.spec
    if resume and not snapshot.reconcile(ray_path):
        console.say(f"{ray_path.name} was stopped before its first whole snapshot: its trials start again")
        snapshot.discard(ray_path)
    elif resume:  # the run config (callbacks, stopper, checkpoint policy) comes back from ray_path
        trainable = trainable_for(setup, resources)
        return tune.Tuner.restore(
            ray_path.path,
            trainable=trainable,
            storage_filesystem=ray_path.fs,
            resume_unfinished=True,
            resume_errored=True,
        )
    s = spec.search
    # metric/mode go to OptunaSearch and TuneConfig, never the scheduler
    searcher = MultiFidelityOptunaSearch(
        space=spec.space,
        metric=s.metric,
        mode=s.mode,
        sampler=make_sampler(s.sampler, s.seed, s.startup_trials, s.multivariate),
        seed_params=spec.seed_params(),
    )
    return new_tuner(setup, ray_path, resources, concurrency, recorder, searcher, make_scheduler(spec), s.num_samples)


def trainable_for(setup: TrialSetup, resources: dict[str, float]) -> Any:
    """The trial function with its setup and resources, as Tune runs it."""
    from ray import tune

    return tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)


def new_tuner(
    setup: TrialSetup,
    ray_path: Location,
    resources: dict[str, float],
    concurrency: int,
    recorder: TrialRecorder,
    search_alg: Any,
    scheduler: Any,
    num_samples: int,
) -> Any:
    """A Tuner writing to `ray_path` with the runner's trial names, checkpoints, retries and recorder
    (the search's own, and runner.repeats' re-training of its best configs)."""
    from ray import tune

    from runner.tune.diverged import StopDiverged
    from runner.tune.progress import TrialProgress
    from runner.tune.restore import ContinueFromNewestCheckpoint

    s = setup.spec.search
    return tune.Tuner(
        trainable_for(setup, resources),
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=concurrency,
            # A fresh worker per trial: a trial's reports are sent beside its training (runner.tune.in_order),
            # so a trial ASHA stops is still training when Tune would hand its worker to the next trial,
            # which then fails ("reuse requires reset_config() to ... return True"); a stopped trial's
            # worker exits instead, ending its training at a step boundary (runner.tune.trial.WorkerExit).
            reuse_actors=False,
            trial_dirname_creator=trial_dirname,
            trial_name_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=ray_path.name,
            storage_path=ray_path.parent.path,
            storage_filesystem=ray_path.fs,  # the same filesystem every read of the runner uses
            # The keep policy below can delete the checkpoint a crash's last snapshot names: a
            # restored trial is pointed at its newest existing one (runner.tune.restore)
            callbacks=[recorder, TrialProgress(setup, num_samples), ContinueFromNewestCheckpoint()],
            stop=StopDiverged(),  # a diverged trial fails once (runner.tune.diverged)
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=SCORE_KEY, checkpoint_score_order="max"
            ),
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            verbose=1,  # Tune's status tables: the search's log file (runner.console), or the console with --verbose
        ),
    )


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Ray's default embeds every config value."""
    return f"trial_{trial.trial_id}"
