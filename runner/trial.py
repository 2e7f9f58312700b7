"""One Ray Tune trial: build the trial's run config, train it, report every epoch to Tune.

Every epoch is reported with ``tune.report(metrics, checkpoint=...)``. The reported metrics are
the engine's epoch metrics plus:

- ``epoch`` and ``evaluated`` (whether validation ran this epoch);
- on an epoch without validation, the last validation values are repeated so that ASHA and
  Optuna always find the search metric; before the first validation a mAP metric reads 0.0
  (the value of "no detections"). MLflow gets validation metrics only on evaluated epochs;
- ``checkpoint_score``: the search metric signed so that higher is better, ``-inf`` on epochs
  without validation, so Ray's "keep the best checkpoint" picks an evaluated epoch.

The checkpoint directory holds ``checkpoint.pt`` (the engine's checkpoint), ``config.yaml``
(the trial's resolved run config), ``report.json`` (epoch + metrics) and, on evaluated epochs,
``predictions.json`` (validation detections in the submission format).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from localization.api import RunConfig, dump_yaml
from runner.names import CHECKPOINT_FILE, CONFIG_FILE, PREDICTIONS_FILE, REPORT_FILE
from runner.spec import SearchFile, validation_metrics

SCORE_KEY = "checkpoint_score"


@dataclass
class TrialSetup:
    """What every trial needs besides its sampled values (sent once via tune.with_parameters)."""

    spec: SearchFile
    num_threads: int  # torch threads on CPU-only clusters (the trial's CPUs); 0 keeps the default


def trial_run_config(setup: TrialSetup, values: dict[str, Any]) -> RunConfig:
    """The trial's run config; on CPU the thread count follows the trial's CPUs unless set."""
    cfg = setup.spec.trial_config(values)
    if setup.num_threads and cfg.train.num_threads == 0:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_threads=setup.num_threads))
    return cfg


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune function trainable. ``config`` is ``{dotted key: value}`` from the space."""
    from localization.api import train  # torch is imported in trial workers only

    cfg = trial_run_config(setup, config)
    # Ray logs "Checkpoint successfully created" for every epoch of every trial: console noise
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    reporter = EpochReporter(cfg, setup.spec.search.metric, setup.spec.search.mode)
    # The engine's own per-epoch checkpoint is scratch (Tune keeps the copies that matter): one
    # folder per worker process, emptied per trial, so a killed worker leaks at most one.
    work = Path(tempfile.gettempdir()) / f"runner-engine-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        resume = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # a retried or resumed trial continues from its last epoch
            local = checkpoint.filesystem.type_name == "local"  # else Ray downloads it (as_directory)
            with (
                contextlib.nullcontext(latest_checkpoint(Path(checkpoint.path))) if local else checkpoint.as_directory()
            ) as found:
                if found is not None:
                    resume = work / "resume.pt"
                    shutil.copyfile(Path(found) / CHECKPOINT_FILE, resume)
                    reporter.restore(json.loads((Path(found) / REPORT_FILE).read_text()))
        train(cfg, work, on_epoch=reporter, resume=resume, log=reporter.log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def latest_checkpoint(given: Path) -> Path | None:
    """The checkpoint to continue from: ``given``, or the trial's newest kept one if it is gone.

    After a driver crash Ray restores from its last experiment snapshot, which may name a
    checkpoint that its keep-the-best-and-latest policy has deleted since; the trial's folder then
    holds newer ones. For storage on a (shared) local filesystem; None: start from scratch.
    """
    if (given / REPORT_FILE).is_file():
        return given
    kept = [d for d in given.parent.glob("checkpoint_*") if (d / REPORT_FILE).is_file()]
    return max(kept, key=lambda d: json.loads((d / REPORT_FILE).read_text())["epoch"], default=None)


class EpochReporter:
    """The engine's ``on_epoch`` callback: epoch metrics + checkpoint directory -> tune.report."""

    def __init__(self, cfg: RunConfig, metric: str, mode: str) -> None:
        self.cfg = cfg
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
        """Carry the last validation values over a resume (from the checkpoint's report.json)."""
        self.last_validation = report.get("last_validation", {})

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
        metrics.update(epoch=report.epoch, evaluated=bool(report.evaluated), **{SCORE_KEY: score}, **self.placement)
        with tempfile.TemporaryDirectory(prefix="report-") as tmp:
            out = Path(tmp)
            _link_or_copy(report.checkpoint, out / CHECKPOINT_FILE)
            (out / CONFIG_FILE).write_text(dump_yaml(self.cfg))
            (out / REPORT_FILE).write_text(
                json.dumps(
                    {
                        "epoch": report.epoch,
                        "evaluated": bool(report.evaluated),
                        "metrics": report.metrics,
                        "last_validation": self.last_validation,
                    }
                )
            )
            if report.predictions is not None:
                (out / PREDICTIONS_FILE).write_text(json.dumps(report.predictions))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link is free (the engine replaces its checkpoint file atomically, never in place)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
