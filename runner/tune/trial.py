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
them), ``report.json`` lists them under ``postprocess``, the metric ``postprocess_search_s``
is the time the inner search took and ``postprocess_training_epoch`` the epoch training was on
when it ended. The search does not hold up training: the training loop hands
each evaluation's raw candidates over (its ``hand_off``) and trains on, while one background
thread (runner.tune.in_order) runs the search, scores the pick and makes the reports, in epoch
order, each with the checkpoint of its own epoch (linked when the epoch ended). The reports and
what ASHA and Optuna decide from them are those of a search run in line; they arrive later, by at
most one evaluation interval (an evaluation first waits for the previous one's search), so a
trial that ASHA stops has trained that much further for nothing. The worker log stamps each line
with the time, so it shows the epochs trained while a search ran.

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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from localization.api import RunConfig, dump_yaml, metrics_as_floats
from runner.names import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    POSTPROCESS_SECONDS,
    POSTPROCESS_TRAINING_EPOCH,
    PREDICTIONS_FILE,
    REPEAT_OF,
    REPORT_FILE,
)
from runner.searchfile.spec import SearchFile, validation_metrics
from runner.tracking.system_metrics import ParentRunAddress, TrialSystemMetrics
from runner.tune.in_order import InOrder
from runner.tune.postprocess_search import PostprocessSearch
from runner.tune.storage import Location

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
                hand_off = reporter.hand_off if postprocess is not None else None
                train(
                    cfg,
                    work,
                    on_epoch=reporter,
                    resume=resume,
                    log=reporter.log,
                    should_stop=exiting,
                    hand_off=hand_off,
                )
                if not exiting():  # a worker that exits does not wait for the reports still queued
                    reporter.wait()
        except TrainingDiverged as exc:  # final: raising would be retried search.max_failures times
            reporter.wait()  # the epochs before come first
            tune.report({setup.spec.search.metric: math.nan, DIVERGED_KEY: f"{type(exc).__name__}: {exc}"})
    finally:
        reporter.close()
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
    steps, and waits for the thread to end: not only to leave the training loop, since what follows
    (closing the reporter and the system-metrics monitor, then Ray dropping the exception that ends
    a stopped trial, whose traceback still holds tensors) frees tensors too.
    """

    def __init__(self) -> None:
        self.exiting = threading.Event()
        self.threads: set[threading.Thread] = set()
        atexit.register(self.join)

    @contextmanager
    def training(self) -> Iterator[Callable[[], bool]]:
        """The current thread trains in this block; yields the question the loop asks between steps.

        The thread stays tracked after the block, until it ends (see the class)."""
        self.threads = {t for t in self.threads if t.is_alive()}
        self.threads.add(threading.current_thread())
        yield self.exiting.is_set

    def join(self) -> None:
        self.exiting.set()
        for thread in list(self.threads):
            if thread is not threading.current_thread():
                thread.join(timeout=EXIT_WAIT_S)


_exit_guard: WorkerExit | None = None


def _worker_exit() -> WorkerExit:
    """This worker process's guard (one atexit hook however many trials the worker runs)."""
    global _exit_guard
    if _exit_guard is None:
        _exit_guard = WorkerExit()
    return _exit_guard


def shrink_finished(trial_dir: Location) -> int:
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
                freed += path.size()
                path.delete()
    return freed


class EpochReporter:
    """The training loop's ``on_epoch`` callback: epoch metrics + checkpoint directory -> tune.report.

    With a post-processing search the loop hands each evaluation's raw candidates over
    (:meth:`hand_off`) and the reports are made on a background thread (``InOrder``), the search
    of an evaluated epoch first; otherwise each report is made in the loop's thread.
    """

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
        self.handed: dict[int, Any] = {}  # {epoch: SubsetScorer} handed over, not yet reported
        self.reports = InOrder("trial-reports") if postprocess is not None else None
        self.training_epoch = 0  # the epoch the loop trains once its last report was handed over

    def restore(self, report: dict[str, Any]) -> None:
        """Carry the last validation values (and post-processing choice) over a resume (from the
        checkpoint's report.json)."""
        self.last_validation = report.get("last_validation", {})
        if self.postprocess is not None:
            self.postprocess.restore(report.get("postprocess", {}))

    def log(self, line: str) -> None:
        """Progress lines go to the worker log (Ray forwards them with a trial prefix), stamped
        with the time: they show which epochs trained while a post-processing search ran."""
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    def hand_off(self, epoch: int, scorer: Any) -> None:  # scorer: localization.api.SubsetScorer
        """The loop's evaluation of ``epoch``: searched and scored with its report. One search at a
        time (and so one evaluation's candidates held beside the next): the previous one's first."""
        assert self.reports is not None
        started = time.perf_counter()
        self.reports.wait()
        if (waited := time.perf_counter() - started) >= 1.0:
            self.log(f"epoch {epoch:>3}  waited {waited:.1f}s for the previous evaluation's post-processing search")
        self.handed[epoch] = scorer

    def __call__(self, report: Any) -> None:  # report: localization.api.EpochReport
        snapshot = Path(tempfile.mkdtemp(prefix="report-"))
        _link_or_copy(report.checkpoint, snapshot / CHECKPOINT_FILE)  # this epoch's, before the loop replaces it
        scorer = self.handed.pop(report.epoch, None)
        if self.reports is None:
            self._report(report, scorer, snapshot)
            return
        try:
            self.reports.submit(lambda: self._report(report, scorer, snapshot))
        except BaseException:  # an earlier report failed (or the trial was stopped): this one is not made
            shutil.rmtree(snapshot, ignore_errors=True)
            raise
        self.training_epoch = report.epoch + 1  # on return the loop trains the next epoch

    def wait(self) -> None:
        """Until every epoch handed to the background thread is reported; raises its failure."""
        if self.reports is not None:
            self.reports.wait()

    def close(self) -> None:
        if self.reports is not None:
            self.reports.close()

    def _report(self, report: Any, scorer: Any, snapshot: Path) -> None:
        """tune.report of one epoch from ``snapshot`` (a folder holding its checkpoint); a handed-over
        evaluation (``scorer``) is searched and scored first."""
        try:
            overlap = {}
            if scorer is not None:
                report, overlap = self._scored(report, scorer)
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
            metrics.update(overlap)
            cfg = dataclasses.replace(self.cfg, test=report.test) if report.test is not None else self.cfg
            (snapshot / CONFIG_FILE).write_text(dump_yaml(cfg))
            (snapshot / REPORT_FILE).write_text(
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
                (snapshot / PREDICTIONS_FILE).write_text(json.dumps(report.predictions))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(snapshot))
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def _scored(self, report: Any, scorer: Any) -> tuple[Any, dict[str, int]]:
        """``report`` with the validation metrics, predictions and settings of the post-processing
        search's pick on ``scorer``, and the metric of the epoch the loop was on when it ended."""
        assert self.postprocess is not None
        self.log(f"epoch {report.epoch:>3}  post-processing search on {len(scorer.video_ids)} videos: started")
        test = self.postprocess(scorer)
        result = scorer.result(test)
        metrics = {**report.metrics, **(metrics_as_floats(result.metrics) if result.metrics is not None else {})}
        chosen = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.postprocess.chosen.items()
        )
        found = f"{self.metric} {metrics[self.metric]:.2f}" if self.metric in metrics else "no labelled instances"
        seconds, training = self.postprocess.seconds, self.training_epoch
        reached = f"reached epoch {training}" if training <= self.cfg.train.epochs else "had ended"
        self.log(
            f"epoch {report.epoch:>3}  post-processing search: done in {seconds:.1f}s ({chosen}), {found}; "
            f"training meanwhile {reached}"
        )
        scored = dataclasses.replace(report, metrics=metrics, predictions=result.predictions, test=test)
        return scored, {POSTPROCESS_TRAINING_EPOCH: training}


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link is free (the training loop replaces its checkpoint file atomically, never in place)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
