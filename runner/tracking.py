"""The MLflow record of a search: one parent run, one nested child run per Ray trial.

Only the driver writes (one writer per SQLite database): :class:`TrialRecorder` is a Ray Tune
callback, so results, checkpoints and trial ends reach it in the driver process. It replaces
Ray's ``MLflowLoggerCallback``, which cannot nest runs, does not upload checkpoints, and opens a
second run per trial after a restore (stack notes M4-M6, section 4). The layout it writes is
the contract in INTERFACES.md ("MLflow layout contract"), which runner.promote reads.

Resume safety: a trial's child run is found again by its ``runner.trial_id`` tag (never a
second run per trial), reopened, and epochs it already logged are not logged twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from localization.config import flatten, to_dict
from localization.errors import InputError
from runner.spec import LOSS_METRICS, SearchFile, validation_metrics
from runner.trial import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    POSTPROCESS_SECONDS,
    PREDICTIONS_FILE,
    REPORT_FILE,
    TrialSetup,
    trial_run_config,
)

EMBEDDED_STORE_DIR = "mlflow"  # under the cwd: mlflow.db + artifacts/ (git-ignored)
PARAM_VALUE_LIMIT = 6000  # MLflow's longest param value
SERVER_TIMEOUT_S = 5  # connecting to a tracking server
PARAM_BATCH = 100  # MLflow's most params per log_batch call
EPOCH_METRICS = (*LOSS_METRICS, "lr", "epoch_time_s")
PLACEMENT = ("ray_node_id", "cuda_visible_devices")  # reported by each trial, tagged runner.<key>

# Tags (the layout contract)
ROLE, TRIAL_ID, STATUS, FAILURE = "runner.role", "runner.trial_id", "runner.status", "runner.failure"
SEARCHED_KEYS, BEST_EPOCH, PARENT = "runner.searched_keys", "runner.best_epoch", "mlflow.parentRunId"
RAY_PATH, TRIAL_DIR, SPEC_HASH = "runner.ray_experiment_path", "runner.trial_dir", "runner.spec_hash"
SELECTION, RETRIES, LAST_ERROR = "runner.selection", "runner.retries", "runner.last_error"
POSTPROCESS_TAG = "postprocess."  # + test.<key>: the best checkpoint's tuned post-processing


@dataclass(frozen=True)
class Store:
    """Where the record goes: a tracking URI, and for SQLite stores the artifact root."""

    uri: str
    artifact_root: Path | None  # None: the tracking server decides (http://, databases)


_LOST: dict[str, str] = {}  # parent run id -> why its store failed (read by runner.search)


def lost_reason(parent_id: str) -> str | None:
    """Why the tracking store failed during the search of ``parent_id`` (None: it did not)."""
    return _LOST.get(parent_id)


def resolve_store(uri: str | None, cwd: Path) -> Store:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else the embedded ``mlflow/`` store.

    A SQLite store keeps its artifacts in ``artifacts/`` beside the database file.
    """
    embedded = f"sqlite:///{cwd.resolve() / EMBEDDED_STORE_DIR / 'mlflow.db'}"
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or embedded
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        return Store(uri, database.parent / "artifacts")
    return Store(uri, None)


def connect(store: Store) -> MlflowClient:
    """A client for ``store``, checked reachable (InputError naming the URI otherwise)."""
    _check_server(store.uri)
    # "Creating initial MLflow database tables..." is noise on stderr, where errors must stand alone
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    try:
        if store.artifact_root is not None:
            store.artifact_root.parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=store.uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # any backend failure: bad scheme, missing driver, bad database URL, ...
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise InputError(f"tracking.uri {store.uri}: tracking store not usable ({first})") from None
    return client


def _check_server(uri: str) -> None:
    """Fail fast on a tracking server nobody answers: MLflow's client retries for minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=SERVER_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise InputError(f"tracking.uri {uri}: no tracking server answers there ({exc})") from None


def experiment_id(client: MlflowClient, store: Store, name: str) -> str:
    """The experiment's id, created with an explicit artifact location when the store has one."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise InputError(f"experiment: {name!r} is deleted in {store.uri}; restore it or pick another name")
        return experiment.experiment_id
    location = (store.artifact_root / name).as_uri() if store.artifact_root is not None else None
    return client.create_experiment(name, artifact_location=location)


def start_parent(client: MlflowClient, exp_id: str, spec: SearchFile, ray_path: Path, searcher: str) -> str:
    """Create the search's parent run with its tags, options and the search file."""
    tags = {
        ROLE: "search",
        "runner.search_file": str(spec.path),
        RAY_PATH: str(ray_path),
        "runner.searcher": searcher,
        "runner.metric": spec.search.metric,
        "runner.mode": spec.search.mode,
        "runner.num_samples": str(spec.search.num_samples),
        STATUS: "running",
        SPEC_HASH: spec_hash(spec),
    }
    if spec.search.selection is not None:  # read back by runner.selection.describe_selection
        tags[SELECTION] = json.dumps(to_dict(spec.search.selection))
    run = client.create_run(exp_id, run_name=ray_path.name, tags=tags)
    run_id = run.info.run_id
    options = {f"search.{k}": v for k, v in flatten_options(spec).items()}
    _log_params(client, run_id, options)
    client.log_artifact(run_id, str(spec.path), "search_space")
    return run_id


def spec_hash(spec: SearchFile) -> str:
    """A fingerprint of the resolved search file: --resume refuses a file that changed."""
    text = json.dumps(spec.resolved(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten_options(spec: SearchFile) -> dict[str, Any]:
    """The search section (without the space) plus each space entry's spelling, flat."""
    out: dict[str, Any] = {}
    for key, value in to_dict(spec.search).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    out.update({f"space.{p.key}": p.describe() for p in spec.space.params})
    if spec.postprocess is not None:
        out["postprocess.trials"] = spec.postprocess.trials
        out.update({f"postprocess.space.{p.key}": p.describe() for p in spec.postprocess.space.params})
    return out


def find_parent(client: MlflowClient, exp_id: str, ray_path: Path) -> str | None:
    """The parent run of the search stored at ``ray_path`` (for --resume)."""
    runs = client.search_runs([exp_id], f"tags.`{ROLE}` = 'search' and tags.`{RAY_PATH}` = '{ray_path}'", max_results=1)
    return runs[0].info.run_id if runs else None


def child_runs(client: MlflowClient, exp_id: str, parent_id: str) -> list[Any]:
    """Every child run of a parent, oldest first (the order the trials started)."""
    runs = client.search_runs(
        [exp_id], f"tags.`{PARENT}` = '{parent_id}'", max_results=10000, order_by=["attributes.start_time ASC"]
    )
    return list(runs)


def close_open_children(client: MlflowClient, exp_id: str, parent_id: str) -> int:
    """End children still RUNNING (an interrupted search) as KILLED; returns how many."""
    count = 0
    for run in child_runs(client, exp_id, parent_id):
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, STATUS, "interrupted")
            client.set_terminated(run.info.run_id, "KILLED")
            count += 1
    return count


def drop_orphans(client: MlflowClient, exp_id: str, parent_id: str, trial_ids: set[str]) -> int:
    """Delete RUNNING child runs of trials the resumed Ray experiment does not know; returns how many.

    A trial started after Ray's last experiment snapshot before a crash is not restored: the
    restored searcher proposes it again under a new trial id (a new run), so the old run is a
    duplicate of work redone, not a trial of the search.
    """
    count = 0
    for run in child_runs(client, exp_id, parent_id):
        if run.info.status == "RUNNING" and run.data.tags.get(TRIAL_ID) not in trial_ids:
            client.delete_run(run.info.run_id)
            count += 1
    return count


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
        with self._timed():
            run_id = self._run_id(trial)
            placement = {k: str(result[k]) for k in PLACEMENT if k in result}
            if placement and self._placed.get(trial.trial_id) != placement:  # first result, or a new worker
                self.client.log_batch(run_id, tags=[RunTag(f"runner.{k}", v) for k, v in placement.items()])
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
                metrics.append(Metric(f"best_{self.metric}", float(result[self.metric]), stamp, epoch))
        self.client.log_batch(run_id, metrics=metrics)
        self._logged[trial.trial_id] = epoch

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.lost:
            return
        with self._timed():
            last_epoch = int((trial.last_result or {}).get("epoch", 0))
            epochs = trial_run_config(self.trial_setup, trial.config).train.epochs
            self._finish(trial, "pruned" if last_epoch < epochs else "finished")

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
            best = self.client.get_metric_history(run_id, f"best_{self.metric}")
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
            ROLE: "trial",
            TRIAL_ID: trial.trial_id,
            STATUS: "running",
            SEARCHED_KEYS: ",".join(trial.config),
            TRIAL_DIR: str(trial.path),
        }
        run = self.client.create_run(self.exp_id, run_name=Path(trial.path).name, tags=tags)
        _log_params(self.client, run.info.run_id, flatten(cfg))
        return run.info.run_id

    def _finish(self, trial: Any, status: str, failure: str | None = None) -> None:
        """Upload the best checkpoint, set the summary and status tags, end the run."""
        run_id = self._run_id(trial)
        best = best_checkpoint(Path(trial.path), self.metric, self.sign)
        if best is not None:
            directory, report = best
            _upload_best(self.client, run_id, directory)
            self.client.log_metric(
                run_id, f"best_{self.metric}", float(report["metrics"][self.metric]), step=int(report["epoch"])
            )
            self.client.set_tag(run_id, BEST_EPOCH, str(report["epoch"]))
            chosen = report.get("postprocess", {})  # the settings the best checkpoint's config holds
            if chosen:
                self.client.log_batch(
                    run_id, tags=[RunTag(f"{POSTPROCESS_TAG}{key}", _param_text(v)) for key, v in chosen.items()]
                )
        self.client.set_tag(run_id, STATUS, status)
        if failure:
            self.client.set_tag(run_id, FAILURE, failure)
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")
        self._runs.pop(trial.trial_id, None)


def best_checkpoint(trial_dir: Path, metric: str, sign: float) -> tuple[Path, dict[str, Any]] | None:
    """The kept checkpoint whose epoch measured the best `metric` (ties: the later epoch).

    Ray keeps the best-scored checkpoint (see runner.trial's ``checkpoint_score``; on equal
    scores the later one) and the latest, so the best measured epoch is always among them.
    """
    best: tuple[float, int, Path, dict[str, Any]] | None = None
    for directory in trial_dir.glob("checkpoint_*"):
        report_file = directory / REPORT_FILE
        if not report_file.is_file():
            continue
        report = json.loads(report_file.read_text())
        value = report["metrics"].get(metric)
        if value is None or not math.isfinite(value):
            continue
        key = (sign * value, int(report["epoch"]))
        if best is None or key > best[:2]:
            best = (*key, directory, report)
    return None if best is None else (best[2], best[3])


def reported_results(trial_dir: Path) -> list[dict[str, Any]]:
    """What the trial reported to Tune so far (Ray's ``result.json``, one JSON object per line)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    results = []
    for line in path.read_text().splitlines():
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
    return [r for r in results if "epoch" in r]


def failure_reason(trial: Any) -> str:
    """The last line of the trial's error (for example the engine's TrainingDiverged message)."""
    error_file = getattr(trial, "error_file", None)
    text = Path(error_file).read_text() if error_file and Path(error_file).is_file() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "trial failed (no error message)")[:1000]


def _last_logged_epoch(client: MlflowClient, run_id: str) -> int:
    history = client.get_metric_history(run_id, "loss")
    return max((m.step for m in history), default=0)


def _upload_best(client: MlflowClient, run_id: str, directory: Path) -> None:
    """checkpoints/best/{checkpoint.pt, config.yaml} and predictions/validation_best.json."""
    for name in (CHECKPOINT_FILE, CONFIG_FILE):
        client.log_artifact(run_id, str(directory / name), "checkpoints/best")
    predictions = directory / PREDICTIONS_FILE
    if predictions.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "validation_best.json"
            shutil.copyfile(predictions, staged)
            client.log_artifact(run_id, str(staged), "predictions")


def _log_params(client: MlflowClient, run_id: str, values: dict[str, Any]) -> None:
    """Every value as a param (JSON for non-strings), in batches MLflow accepts."""
    params = [Param(k, _param_text(v)) for k, v in values.items()]
    for start in range(0, len(params), PARAM_BATCH):
        client.log_batch(run_id, params=params[start : start + PARAM_BATCH])


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:PARAM_VALUE_LIMIT]
