"""A restored trial continues from its newest checkpoint on storage, whatever Ray's snapshot says.

The failure this prevents: after a driver crash, ``Tuner.restore`` restores every
unfinished trial from the checkpoint named in the last experiment snapshot
(``experiment_state-*.json``: written at the end of a controller step, copied to storage in the
background). The keep policy (``CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=...)``:
the best-scored checkpoint and the latest) deletes the previous latest as soon as Ray registers
the next checkpoint, before a newer snapshot reaches storage. A driver killed in between leaves a
snapshot that names a deleted folder; Ray's own ``Trainable.restore`` then raises "Could not
recover from checkpoint as it does not exist on storage anymore" before the trainable runs, on
every retry, and the trial ends FAILED. The snapshot's checkpoint index is stale too, so the
restored trial would write its next checkpoints into folders that newer ones already occupy.

The mechanism: :class:`ContinueFromNewestCheckpoint`, a Tune callback, rebuilds a trial's
checkpoint bookkeeping from its folder on storage before the trial's worker starts: on the
controller's first step after a restore (for every unfinished trial) and whenever a trial is
requeued after its worker died. See :func:`continue_from_newest` for the rule.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ray.train import Checkpoint
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.tune import Callback
from ray.tune.experiment import Trial

from runner.tune.trial_results import reported_results

CHECKPOINT_PREFIX = "checkpoint_"  # Ray's folder names: checkpoint_000000, checkpoint_000001, ...
CHECKPOINT_NAME_KEY = "checkpoint_dir_name"  # in each result: the checkpoint folder it reported


class ContinueFromNewestCheckpoint(Callback):
    """Points restored and retried trials at their newest checkpoint that exists (see the module)."""

    def __init__(self) -> None:
        self._restored = False  # the restored trials are repaired once, before any starts

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self._restored:
            return
        self._restored = True
        for trial in trials:
            if trial.status in (Trial.PENDING, Trial.PAUSED):  # unfinished or errored, queued to resume
                continue_from_newest(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        continue_from_newest(trial)


def continue_from_newest(trial: Any) -> None:
    """Rebuild ``trial``'s checkpoint bookkeeping from its folder (local or shared storage).

    A checkpoint counts if its folder exists and the driver processed its report (a line of the
    trial's ``result.json`` names it): each is registered in order with the result Ray recorded
    for it, so the keep policy applies as it did, the newest becomes the one Ray restores, and the
    checkpoint index continues after it. The newest processed report's folder always exists: Ray
    deletes a folder only when it registers a newer one. Folders without a processed report were
    persisted by a worker whose driver died before it saw them: they are removed (the epochs are
    trained again, exactly, and reported once). Nothing changes when Ray already names the newest.
    """
    if trial.storage.storage_filesystem.type_name != "local":
        return
    trial_dir = Path(trial.path)
    # Ray's result.json: the results the driver processed (the last, if one was reported twice)
    processed = {r[CHECKPOINT_NAME_KEY]: r for r in reported_results(trial_dir) if r.get(CHECKPOINT_NAME_KEY)}
    kept = []
    for folder in sorted(trial_dir.glob(f"{CHECKPOINT_PREFIX}*")):  # zero-padded: name order is index order
        if folder.name in processed:
            kept.append(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    manager = trial.run_metadata.checkpoint_manager
    named = manager.latest_checkpoint_result
    if (Path(named.checkpoint.path) if named else None) == (kept[-1] if kept else None):
        return
    rebuilt = _CheckpointManager(manager.checkpoint_config)
    for folder in kept:
        checkpoint = Checkpoint(str(folder), filesystem=trial.storage.storage_filesystem)
        rebuilt.register_checkpoint(_TrainingResult(checkpoint=checkpoint, metrics=processed[folder.name]))
    trial.run_metadata.checkpoint_manager = rebuilt
    # The next checkpoint is written to index + 1 (Ray's checkpoint_{index:06d}); -1: none yet
    trial.storage.current_checkpoint_index = int(kept[-1].name.removeprefix(CHECKPOINT_PREFIX)) if kept else -1
    trial.invalidate_json_state()
    trial.run_metadata.invalidate_cache()
