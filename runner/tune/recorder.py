"""The Ray Tune callback that writes each trial's child run of a search's MLflow record.

Only the driver writes the record (one writer per SQLite database): :class:`TrialRecorder` is a
Ray Tune callback, so results, checkpoints and trial ends reach it in the driver process. (Each
trial's worker adds only its system/* metrics to its own run: runner.tracking.system_metrics.) It replaces
Ray's ``MLflowLoggerCallback``, which cannot nest runs, does not upload checkpoints, and opens a
second run per trial after a restore. The names it writes are
runner.names' (the MLflow layout contract), which runner.promote and runner.evaluate read.

Resume safety: a trial's child run is found again by its ``runner.trial_id`` tag (never a
second run per trial), reopened, and epochs it already logged are not logged twice.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from localization import api
from localization.api import flatten
from runner.names import (
    BEST_CHECKPOINT_DIR,
    BEST_EPOCH,
    BEST_PREDICTIONS_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    EPOCH_METRICS,
    FAILURE,
    LAST_ERROR,
    LOSS_HISTORY,
    PARENT,
    PLACEMENT,
    PLACEMENT_PREFIX,
    POSTPROCESS_PREFIX,
    POSTPROCESS_SECONDS,
    PREDICTIONS_DIR,
    PREDICTIONS_FILE,
    REPEAT_OF,
    RETRIES,
    ROLE,
    ROLE_TRIAL,
    SEARCHED_KEYS,
    STATUS,
    TRIAL_DIR,
    TRIAL_ID,
    best_metric,
    source_tags,
)
from runner.searchfile.spec import validation_metrics
from runner.tracking.dataset_input import dataset_input
from runner.tracking.mlflow_store import Store
from runner.tracking.search_run import log_params
from runner.tune.trial import TrialSetup, diverged, shrink_finished, trial_run_config
from runner.tune.trial_results import best_checkpoint, failure_reason, reported_results

_LOST: dict[str, str] = {}  # parent run id -> why its store failed (read by runner.search)


def lost_reason(parent_id: str) -> str | None:
    """Why the tracking store failed during the search of ``parent_id`` (None: it did not)."""
    return _LOST.get(parent_id)


class TrialRecorder(Callback):
    """Driver-side Tune callback writing each trial's child run (the only MLflow writer)."""

    def __init__(self, store: Store, exp_id: str, parent_id: str, setup: TrialSetup) -> None:
        self.store = store
        self.exp_id = exp_id
        self.parent_id = parent_id
        self.trial_setup = setup  # not `setup`: that name is a Callback hook
        self.spec = setup.spec
        self.metric = setup.spec.search.metric
        self.sign = 1.0 if setup.spec.search.mode == "max" else -1.0
        self.seconds = 0.0  # time spent writing to MLflow (the tracking overhead)
        self.calls = 0
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._logged: dict[str, int] = {}  # trial id -> last epoch logged
        self._best: dict[str, float] = {}  # trial id -> best signed metric so far
        self._placed: dict[str, dict[str, str]] = {}  # trial id -> its worker's node and GPUs

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into Ray's experiment state: no client, no caches (rebuilt from MLflow)."""
        state = dict(self.__dict__)
        state.update(_client=None, _runs={}, _logged={}, _best={}, _placed={})
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.store.uri)
        return self._client

    @contextmanager
    def _timed(self) -> Iterator[None]:
        """Time a hook's MLflow writes; a store failure stops the search instead of crashing it."""
        started = time.perf_counter()
        try:
            yield
        except (MlflowException, requests.RequestException) as exc:  # not our own bugs or files
            self._lose(exc)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    def _lose(self, exc: Exception) -> None:
        """The store went away: say so now, and stop Tune the way Ctrl-C does.

        Tune's SIGINT handler ends the run gracefully: it saves the experiment state with every
        trial's latest checkpoint, so ``--resume`` continues once the store is back. Hooks do
        nothing from here on (a closed MLflow record is written by the resumed search).
        """
        text = str(exc).strip()
        reason = f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
        _LOST[self.parent_id] = reason
        print(
            f"error: tracking store {self.store.uri} failed ({reason}); stopping the search, "
            "trial results and checkpoints stay in Ray's storage",
            file=sys.stderr,
            flush=True,
        )
        signal.raise_signal(signal.SIGINT)

    @property
    def lost(self) -> bool:
        return self.parent_id in _LOST

    # ---- Tune hooks ---------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.lost:
            return
        with self._timed():
            self._run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.lost:
            return
        if diverged(result) is not None:  # the trial's terminal report: its run ends in on_trial_complete
            return
        with self._timed():
            run_id = self._run_id(trial)
            placement = {k: str(result[k]) for k in PLACEMENT if k in result}
            if placement and self._placed.get(trial.trial_id) != placement:  # first result, or a new worker
                self.client.log_batch(run_id, tags=[RunTag(f"{PLACEMENT_PREFIX}{k}", v) for k, v in placement.items()])
                self._placed[trial.trial_id] = placement
            self._log_result(trial, run_id, result)

    def _log_result(self, trial: Any, run_id: str, result: dict) -> None:
        """One epoch's metrics at ``step=epoch``, once (skipped when logged before a retry or resume)."""
        epoch = int(result["epoch"])
        if epoch <= self._logged.get(trial.trial_id, 0):
            return
        evaluated = [*validation_metrics(self.spec.base), POSTPROCESS_SECONDS] if result.get("evaluated") else []
        keys = [*EPOCH_METRICS, *evaluated]
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), stamp, epoch) for k in keys if k in result]
        if result.get("evaluated") and self.metric in result:
            signed = self.sign * float(result[self.metric])
            if signed >= self._best.get(trial.trial_id, -math.inf):  # ties: the later epoch, as Ray
                self._best[trial.trial_id] = signed
                metrics.append(Metric(best_metric(self.metric), float(result[self.metric]), stamp, epoch))
        self.client.log_batch(run_id, metrics=metrics)
        self._logged[trial.trial_id] = epoch

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.lost:
            return
        with self._timed():
            self._finish(trial, *trial_end(self.trial_setup, trial))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A failed worker (killed, out of memory) is retried from its last checkpoint: the same
        run continues; the retry count and the reason are tagged on it."""
        if self.lost:
            return
        with self._timed():
            run_id = self._run_id(trial)
            self.client.set_tag(run_id, RETRIES, str(trial.num_failures))
            self.client.set_tag(run_id, LAST_ERROR, failure_reason(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial whose worker died more than ``search.max_failures`` times."""
        if self.lost:
            return
        with self._timed():
            self._finish(trial, "failed", failure_reason(trial))

    # ---- helpers ------------------------------------------------------------------------------

    def _run_id(self, trial: Any) -> str:
        """The trial's child run: cached, else found by tag (resume), else created."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self.client.search_runs(
            [self.exp_id],
            f"tags.`{PARENT}` = '{self.parent_id}' and tags.`{TRIAL_ID}` = '{trial.trial_id}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, STATUS, "running")
            self._logged[trial.trial_id] = _last_logged_epoch(self.client, run_id)
            best = self.client.get_metric_history(run_id, best_metric(self.metric))
            if best:
                self._best[trial.trial_id] = max(self.sign * m.value for m in best)
            for result in reported_results(Path(trial.path)):  # epochs Tune saw while the store was away
                self._log_result(trial, run_id, result)
        else:
            run_id = self._create_run(trial)
        self._runs[trial.trial_id] = run_id
        return run_id

    def _create_run(self, trial: Any) -> str:
        cfg = trial_run_config(self.trial_setup, trial.config)  # what the trial trains with
        tags = {
            PARENT: self.parent_id,
            ROLE: ROLE_TRIAL,
            TRIAL_ID: trial.trial_id,
            STATUS: "running",
            SEARCHED_KEYS: ",".join(k for k in trial.config if k != REPEAT_OF),
            TRIAL_DIR: str(trial.path),
            **source_tags(self.spec.path),
        }
        if REPEAT_OF in trial.config:
            tags[REPEAT_OF] = trial.config[REPEAT_OF]
        run = self.client.create_run(self.exp_id, run_name=Path(trial.path).name, tags=tags)
        log_params(self.client, run.info.run_id, flatten(cfg))
        self.client.log_inputs(run.info.run_id, datasets=[dataset_input(cfg.data)])
        return run.info.run_id

    def _finish(self, trial: Any, status: str, failure: str | None = None) -> None:
        """Upload the best checkpoint, set the summary and status tags, end the run."""
        run_id = self._run_id(trial)
        best = best_checkpoint(Path(trial.path), self.metric, self.sign)
        if best is not None:
            directory, report = best
            _upload_best(self.client, run_id, directory)
            self.client.log_metric(
                run_id, best_metric(self.metric), float(report["metrics"][self.metric]), step=int(report["epoch"])
            )
            self.client.set_tag(run_id, BEST_EPOCH, str(report["epoch"]))
            chosen = report.get("postprocess", {})  # the settings the best checkpoint's config holds
            if chosen:
                text = {key: value if isinstance(value, str) else json.dumps(value) for key, value in chosen.items()}
                self.client.log_batch(run_id, tags=[RunTag(f"{POSTPROCESS_PREFIX}{k}", v) for k, v in text.items()])
        self.client.set_tag(run_id, STATUS, status)
        if failure:
            self.client.set_tag(run_id, FAILURE, failure)
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")
        self._runs.pop(trial.trial_id, None)
        if status != "failed":  # a failed trial may be retried by --resume from its checkpoint
            shrink_finished(Path(trial.path))


def trial_end(setup: TrialSetup, trial: Any) -> tuple[str, str | None]:
    """How a trial Tune completed ended: ``failed`` (diverged, with why), ``pruned`` (the scheduler
    stopped it before its last epoch) or ``finished``."""
    reason = diverged(trial.last_result)
    if reason is not None:  # stopped by runner.tune.diverged.StopDiverged: failed, once
        return "failed", reason
    last_epoch = int((trial.last_result or {}).get("epoch", 0))
    epochs = trial_run_config(setup, trial.config).train.epochs
    return ("pruned" if last_epoch < epochs else "finished"), None


def _last_logged_epoch(client: MlflowClient, run_id: str) -> int:
    history = client.get_metric_history(run_id, LOSS_HISTORY)
    return max((m.step for m in history), default=0)


def _upload_best(client: MlflowClient, run_id: str, directory: Path) -> None:
    """checkpoints/best/{checkpoint.pt, config.yaml} and predictions/validation_best.json.

    The uploaded checkpoint.pt holds what the model needs (weights and EMA weights, config,
    classes: the checkpoint's INFERENCE_KEYS), not the optimizer and RNG state that only resuming
    needs: half the bytes with AdamW.
    """
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / CHECKPOINT_FILE
        api.save_inference_checkpoint(directory / CHECKPOINT_FILE, weights)
        client.log_artifact(run_id, str(weights), BEST_CHECKPOINT_DIR)
        client.log_artifact(run_id, str(directory / CONFIG_FILE), BEST_CHECKPOINT_DIR)
        predictions = directory / PREDICTIONS_FILE
        if predictions.is_file():
            staged = Path(tmp) / BEST_PREDICTIONS_FILE
            shutil.copyfile(predictions, staged)
            client.log_artifact(run_id, str(staged), PREDICTIONS_DIR)
