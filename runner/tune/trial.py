"""One Ray Tune trial: build the trial's run config, train it, report every epoch to Tune.

Every epoch is reported with ``tune.report(metrics, checkpoint=...)``. The reported metrics are
the training loop's epoch metrics plus:

- ``epoch``, ``evaluated`` (whether validation ran this epoch) and ``planned_epochs`` (the
  trial's ``train.epochs``: a trial stopped before it was stopped early, runner.tune.searcher);
- on an epoch without validation, the last validation values are repeated so that ASHA and
  Optuna always find the search metric; before the first validation a mAP metric reads 0.0
  (the value of "no detections"). MLflow gets validation metrics only on evaluated epochs;
- ``checkpoint_score``: the search metric signed so that higher is better, ``-inf`` on epochs
  without validation, so Ray's "keep the best checkpoint" picks an evaluated epoch.

A trial whose loss diverges ends with one terminal report instead of an exception (see
runner.tune.diverged): ``diverged`` (the training loop's ``TrainingDiverged`` message) and the search metric
as NaN.

With ``search.postprocess`` every evaluation picks its post-processing on the model's raw
candidates (runner.tune.postprocess_search): the mAP reported is that of the pick, the epoch's
``config.yaml`` carries the picked ``test.*`` settings (so promotion and runner.evaluate use
them), ``report.json`` lists them under ``postprocess``, and the metric ``postprocess_search_s``
is the time the inner search took.

The checkpoint directory holds ``checkpoint.pt`` (the training loop's checkpoint), ``config.yaml``
(the trial's resolved run config), ``report.json`` (epoch + metrics) and, on evaluated epochs,
``predictions.json`` (validation detections in the submission format).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from localization.api import RunConfig, dump_yaml
from runner.names import CHECKPOINT_FILE, CONFIG_FILE, POSTPROCESS_SECONDS, PREDICTIONS_FILE, REPEAT_OF, REPORT_FILE
from runner.searchfile.spec import SearchFile, validation_metrics
from runner.tracking.system_metrics import ParentRunAddress, TrialSystemMetrics
from runner.tune.postprocess_search import PostprocessSearch

SCORE_KEY = "checkpoint_score"
EXIT_WAIT_S = 60  # how long a worker that exits waits for its trial's training to reach a step boundary
PLANNED_EPOCHS_KEY = "planned_epochs"
DIVERGED_KEY = "diverged"  # in a diverged trial's terminal report: why


@dataclass
class TrialSetup:
    """What every trial needs besides its sampled values (sent once via tune.with_parameters)."""

    spec: SearchFile
    num_threads: int  # torch threads on CPU-only clusters (the trial's CPUs); 0 keeps the default
    record: ParentRunAddress | None = None  # the search's MLflow record, for the worker's system metrics


def trial_run_config(setup: TrialSetup, values: dict[str, Any]) -> RunConfig:
    """The trial's run config; on CPU the thread count follows the trial's CPUs unless set.

    A repeat (runner.tune.repeats) carries the trial it repeats under ``runner.repeat_of``: not a config key.
    """
    cfg = setup.spec.trial_config({k: v for k, v in values.items() if k != REPEAT_OF})
    if setup.num_threads and cfg.train.num_threads == 0:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_threads=setup.num_threads))
    return cfg


def diverged(result: dict[str, Any] | None) -> str | None:
    """Why the trial whose (last) result this is diverged (its terminal report); None if it did not."""
    return None if result is None else result.get(DIVERGED_KEY)


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune function trainable. ``config`` is ``{dotted key: value}`` from the space."""
    from localization.api import TrainingDiverged, train  # torch is imported in trial workers only

    cfg = trial_run_config(setup, config)
    # Ray logs "Checkpoint successfully created" for every epoch of every trial: console noise
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    search = setup.spec.search
    postprocess = (
        PostprocessSearch(setup.spec.postprocess, cfg.test, search.metric, search.mode, search.seed)
        if setup.spec.postprocess is not None
        else None
    )
    reporter = EpochReporter(cfg, search.metric, search.mode, postprocess)
    # the training loop's own per-epoch checkpoint is scratch (Tune keeps the copies that matter): one
    # folder per worker process, emptied per trial, so a killed worker leaks at most one.
    work = Path(tempfile.gettempdir()) / f"runner-training-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    system_metrics = TrialSystemMetrics(setup.record, tune.get_context().get_trial_id()).start()
    try:
        resume = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # a retried or resumed trial continues from its last epoch
            # (runner.tune.restore makes that the newest checkpoint on storage); a local one is used in place
            with checkpoint.as_directory() as found:
                # A finished trial's copies lose their weights once MLflow has them (shrink_finished);
                # one that Ray restores anyway (the driver died before its snapshot said "finished")
                # trains again from the start rather than fail.
                if (Path(found) / CHECKPOINT_FILE).is_file():
                    resume = work / "resume.pt"
                    shutil.copyfile(Path(found) / CHECKPOINT_FILE, resume)
                    reporter.restore(json.loads((Path(found) / REPORT_FILE).read_text()))
        try:
            with _worker_exit().training() as exiting:
                train(
                    cfg,
                    work,
                    on_epoch=reporter,
                    resume=resume,
                    log=reporter.log,
                    choose_test=postprocess,
                    should_stop=exiting,
                )
        except TrainingDiverged as exc:  # final: raising would be retried search.max_failures times
            tune.report({setup.spec.search.metric: math.nan, DIVERGED_KEY: f"{type(exc).__name__}: {exc}"})
    finally:
        system_metrics.stop()
        shutil.rmtree(work, ignore_errors=True)


class WorkerExit:
    """Ends a trial's training at a step boundary before its worker process exits.

    Ray Tune runs a function trainable in a daemon thread and, when the scheduler stops the trial,
    does not wait for that thread before the worker exits. A daemon thread still inside a torch
    operation when the interpreter shuts down is ended by ``pthread_exit``, whose unwinding runs
    into a tensor destructor and aborts the whole process ("Fatal Python error: Aborted", a native
    crash trace in the search's output after a search that succeeded). At exit (atexit runs while
    daemon threads still run normally) this asks the training loop to stop, which it checks between
    steps, and waits for the thread.
    """

    def __init__(self) -> None:
        self.exiting = threading.Event()
        self.threads: set[threading.Thread] = set()
        atexit.register(self.join)

    @contextmanager
    def training(self) -> Iterator[Callable[[], bool]]:
        """The current thread trains in this block; yields the question the loop asks between steps."""
        thread = threading.current_thread()
        self.threads.add(thread)
        try:
            yield self.exiting.is_set
        finally:
            self.threads.discard(thread)

    def join(self) -> None:
        self.exiting.set()
        for thread in list(self.threads):
            thread.join(timeout=EXIT_WAIT_S)


_exit_guard: WorkerExit | None = None


def _worker_exit() -> WorkerExit:
    """This worker process's guard (one atexit hook however many trials the worker runs)."""
    global _exit_guard
    if _exit_guard is None:
        _exit_guard = WorkerExit()
    return _exit_guard


def shrink_finished(trial_dir: Path) -> int:
    """Drop what only an unfinished trial needs from a finished trial's checkpoints; bytes freed.

    A finished or pruned trial is never trained again (``--resume`` restores it as it ended) and,
    once the driver has uploaded its best weights and predictions to MLflow, nothing reads its
    ``checkpoint.pt`` (weights, EMA, optimizer: ~0.5 GB at FineAction size) or
    ``predictions.json``. ``report.json`` and ``config.yaml`` stay: the leaderboard and a resumed
    search read the trial's results from them.
    """
    freed = 0
    for directory in trial_dir.glob("checkpoint_*"):
        for name in (CHECKPOINT_FILE, PREDICTIONS_FILE):
            path = directory / name
            if path.is_file():
                freed += path.stat().st_size
                path.unlink()
    return freed


class EpochReporter:
    """The training loop's ``on_epoch`` callback: epoch metrics + checkpoint directory -> tune.report."""

    def __init__(self, cfg: RunConfig, metric: str, mode: str, postprocess: PostprocessSearch | None = None) -> None:
        self.cfg = cfg
        self.postprocess = postprocess
        self.metric = metric
        self.sign = 1.0 if mode == "max" else -1.0
        self.validation_keys = validation_metrics(cfg)
        self.last_validation: dict[str, float] = {}
        # Where the trial runs (tagged on its MLflow run): the Ray node and the GPUs Ray gave it
        self.placement = {
            "ray_node_id": ray.get_runtime_context().get_node_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        }

    def restore(self, report: dict[str, Any]) -> None:
        """Carry the last validation values (and post-processing choice) over a resume (from the
        checkpoint's report.json)."""
        self.last_validation = report.get("last_validation", {})
        if self.postprocess is not None:
            self.postprocess.restore(report.get("postprocess", {}))

    def log(self, line: str) -> None:
        """Engine progress lines go to the worker log (Ray forwards them with a trial prefix)."""
        print(line, flush=True)

    def __call__(self, report: Any) -> None:  # report: localization.api.EpochReport
        metrics = dict(report.metrics)
        fresh = self.metric in metrics
        if report.evaluated:
            self.last_validation = {k: metrics[k] for k in self.validation_keys if k in metrics}
        for key in self.validation_keys:
            metrics.setdefault(key, self.last_validation.get(key, 0.0))
        score = self.sign * metrics[self.metric] if fresh else -math.inf
        metrics.update(epoch=report.epoch, evaluated=bool(report.evaluated), **self.placement)
        metrics.update({SCORE_KEY: score, PLANNED_EPOCHS_KEY: self.cfg.train.epochs})
        if self.postprocess is not None and report.evaluated:
            metrics[POSTPROCESS_SECONDS] = self.postprocess.seconds
        cfg = dataclasses.replace(self.cfg, test=report.test) if report.test is not None else self.cfg
        with tempfile.TemporaryDirectory(prefix="report-") as tmp:
            out = Path(tmp)
            _link_or_copy(report.checkpoint, out / CHECKPOINT_FILE)
            (out / CONFIG_FILE).write_text(dump_yaml(cfg))
            (out / REPORT_FILE).write_text(
                json.dumps(
                    {
                        "epoch": report.epoch,
                        "evaluated": bool(report.evaluated),
                        "metrics": report.metrics,
                        "last_validation": self.last_validation,
                        **({"postprocess": dict(self.postprocess.chosen)} if self.postprocess else {}),
                    }
                )
            )
            if report.predictions is not None:
                (out / PREDICTIONS_FILE).write_text(json.dumps(report.predictions))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link is free (the training loop replaces its checkpoint file atomically, never in place)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
