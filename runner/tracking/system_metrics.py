"""Per-trial system metrics over time, with MLflow's own monitor, written from the trial's worker.

The driver's TrialRecorder writes a trial's params, epoch metrics, tags and artifacts; only the
worker can see the machine the trial runs on, so the worker runs MLflow's
``SystemMetricsMonitor`` against the trial's run (found by its ``runner.trial_id`` tag, created
by the driver when the trial starts). MLflow logs ``system/cpu_utilization_percentage``,
``system/system_memory_usage_megabytes``, disk and network, and with ``nvidia-ml-py`` and a GPU
``system/gpu_<i>_utilization_percentage`` and ``system/gpu_<i>_memory_usage_megabytes`` for every
GPU of the node (``runner.cuda_visible_devices`` names the trial's). Sampling: every 10 s, or
``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds where the workers see that variable.

These are the only writes not made by the driver: small batches, and MLflow's SQLite sessions
wait up to 20 s for a lock (``PRAGMA busy_timeout``). Everything runs in a background thread
that never raises: a worker that cannot reach the store (or finds no run) logs a warning and
the trial trains on without system metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from runner.names import PARENT, TRIAL_ID

FIND_RUN_TIMEOUT_S = 60  # the driver creates the run when Ray starts the trial: usually at once
FIND_RUN_POLL_S = 0.5
STOP_WAIT_S = 5  # a lookup stuck on an unreachable store is left behind (a daemon thread)

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParentRunAddress:
    """Where the search's parent run is (store, experiment, run id): enough for a worker to find its trial's run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str


class TrialSystemMetrics:
    """``start()`` samples the node in the background until ``stop()``."""

    def __init__(self, record: ParentRunAddress | None, trial_id: str) -> None:
        self.record = record
        self.trial_id = trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitor: Any = None  # mlflow's SystemMetricsMonitor once the run is found

    def start(self) -> TrialSystemMetrics:
        if self.record is not None:
            self._thread = threading.Thread(target=self._start, name="trial-system-metrics", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)
        if self._monitor is not None:
            self._monitor.finish()  # stops its sampling thread and flushes what it holds
            self._last_sample(self._monitor)

    def _last_sample(self, monitor: Any) -> None:
        """One sample at the end, so a trial shorter than the sampling interval still has its
        system metrics (MLflow's monitor drops samples not yet aggregated when it stops)."""
        try:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as exc:  # a background helper: never fail the trial over its metrics
            _logger.warning("last system metrics of trial %s are not logged: %s", self.trial_id, exc)

    def _start(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            run_id = self._find_run()
            if run_id is None or self._stop.is_set():
                return
            # resume_logging: a retried or resumed trial continues the run's step count
            monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=self.record.tracking_uri)
            monitor.start()
            self._monitor = monitor
        except Exception as exc:  # a background helper: never fail the trial over its metrics
            _logger.warning("system metrics of trial %s are not logged: %s", self.trial_id, exc)

    def _find_run(self) -> str | None:
        from mlflow.tracking import MlflowClient

        record = self.record
        client = MlflowClient(tracking_uri=record.tracking_uri)
        query = f"tags.`{PARENT}` = '{record.parent_run_id}' and tags.`{TRIAL_ID}` = '{self.trial_id}'"
        deadline = time.monotonic() + FIND_RUN_TIMEOUT_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            runs = client.search_runs([record.experiment_id], query, max_results=1)
            if runs:
                return runs[0].info.run_id
            self._stop.wait(FIND_RUN_POLL_S)
        _logger.warning("system metrics: no MLflow run of trial %s under run %s", self.trial_id, record.parent_run_id)
        return None
