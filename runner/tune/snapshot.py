"""A resumed search restores a snapshot whose parts agree: no trial lost, none added.

Ray snapshots a search as three files per driver session in the experiment folder:
``experiment_state-<session>.json`` (the trials), ``search_gen_state-<session>.json`` (how many
trials the searcher created, of how many, and which are live under the concurrency limit) and
``searcher-state-<session>.pkl`` (the Optuna study). They are written together in a staging folder
on the driver and copied to storage in the background, one file after another. A driver killed
during a copy leaves parts from different moments, and ``Tuner.restore`` reads the newest of each
kind. A searcher state that counts a trial the experiment state lacks never creates it again: the
search ends a trial short, on every ``--resume``. One that counts fewer creates extra trials, and
its concurrency limit neither frees the slots of lost trials nor tells Optuna about trials it
does not list as live. No searcher state at all (the driver died in its first copy) restores a
searcher that creates nothing.

:func:`reconcile` makes the newest searcher state agree with the newest experiment state before
Ray reads them: it has created exactly the trials the experiment holds, and the live ones are
those still unfinished (a trial Optuna's study does not know is told nothing:
runner.tune.searcher). Without any searcher state it answers False: the search died within
seconds of starting, before a whole snapshot existed, and :func:`discard` clears it so that it
starts again (its trials' MLflow runs, left RUNNING, are dropped as orphans by the caller).
"""

from __future__ import annotations

import json
from typing import Any

from ray import cloudpickle

from runner.tune.searcher import STATE_GLOB as SEARCHER_STATE
from runner.tune.storage import Location

EXPERIMENT_STATE = "experiment_state-*.json"  # Ray's TuneController.CKPT_FILE_TMPL
SEARCH_GEN_STATE = "search_gen_state-*.json"  # Ray's SearchGenerator.CKPT_FILE_TMPL (a cloudpickle)
CONCURRENCY_LIMITER = "name:ConcurrencyLimiter"  # the limiter's part of the search_gen_state
FINISHED = ("TERMINATED", "ERROR")  # Ray's Trial statuses that end a trial


def reconcile(ray_path: Location) -> bool:
    """Rewrite the newest searcher state to agree with the newest experiment state (see the module).

    False when the folder holds an experiment state but no searcher state to restore.
    """
    states = ray_path.glob(EXPERIMENT_STATE)
    generators = ray_path.glob(SEARCH_GEN_STATE)
    if not states:
        return True  # nothing Ray can restore: the caller's Tuner.can_restore already said so
    if not generators or not ray_path.glob(SEARCHER_STATE):
        return False
    trials = [json.loads(entry[0]) for entry in json.loads(states[-1].read_text())["trial_data"]]
    generator = generators[-1]  # the one Ray restores: the newest name
    state: dict[str, Any] = cloudpickle.loads(generator.read_bytes())
    unfinished = {t["trial_id"] for t in trials if t["status"] not in FINISHED}
    agreed = {**state, "counter": len(trials)}
    limiter = state.get(CONCURRENCY_LIMITER)
    if limiter is not None:
        live = {"live_trials": unfinished, "num_unfinished_live_trials": len(unfinished)}
        agreed[CONCURRENCY_LIMITER] = {**limiter, **live}
    if agreed != state:
        generator.write_bytes(cloudpickle.dumps(agreed))
    return True


def discard(ray_path: Location) -> None:
    """Remove Ray's snapshot and trial folders (not the search's own log) so the search starts afresh."""
    for pattern in (EXPERIMENT_STATE, SEARCH_GEN_STATE, SEARCHER_STATE, "trial_*", "tuner.pkl"):
        for entry in ray_path.glob(pattern):
            entry.delete()
