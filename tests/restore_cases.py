"""The repairs a resumed search makes before Ray restores it, checked on any storage (a local folder in
test_faults and test_snapshot, a bucket in test_object_storage): a restored trial continues from
its newest checkpoint (runner.tune.restore), and the snapshot's parts agree (runner.tune.snapshot).
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from ray import cloudpickle

from runner.tune import snapshot
from runner.tune.restore import continue_from_newest
from runner.tune.storage import Location
from runner.tune.trial import SCORE_KEY
from runner.tune.trial_results import trial_folder


def restored_trial(root: Location, scores: list[float], snapshot_after: int) -> Any:
    """A Ray trial as ``Tuner.restore`` rebuilds it from a snapshot taken after epoch ``snapshot_after``
    of a driver that then went on to report every epoch of ``scores`` (the checkpoint score of each
    epoch), Ray's keep policy deleting folders as it went, and died; its worker had persisted one
    more checkpoint that the driver never processed. ``root``: the storage path, on any filesystem."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune import CheckpointConfig
    from ray.tune.experiment import Trial

    config = CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SCORE_KEY, checkpoint_score_order="max")
    storage = StorageContext(root.path, "exp", trial_dir_name="trial_a", storage_filesystem=root.fs)
    trial = Trial("run_trial", stub=True, storage=storage, checkpoint_config=config)
    trial_dir = trial_folder(trial)
    root.fs.create_dir(trial_dir.path)
    snapshot = copy.deepcopy((trial.run_metadata.checkpoint_manager, trial.storage.current_checkpoint_index))
    lines = []
    for index, score in enumerate([*scores, 0.0]):
        folder = trial_dir / f"checkpoint_{index:06d}"
        root.fs.create_dir(folder.path)
        if index == len(scores):
            break  # persisted by the worker, never processed by the driver
        result = {"epoch": index + 1, "training_iteration": index + 1, SCORE_KEY: score}
        lines.append(json.dumps({**result, "checkpoint_dir_name": folder.name}))
        checkpoint = Checkpoint(folder.path, filesystem=folder.fs)
        trial.on_checkpoint(_TrainingResult(checkpoint=checkpoint, metrics=result))  # may delete
        if index + 1 == snapshot_after:
            snapshot = copy.deepcopy((trial.run_metadata.checkpoint_manager, trial.storage.current_checkpoint_index))
    (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
    trial.run_metadata.checkpoint_manager, trial.storage.current_checkpoint_index = snapshot  # restored
    return trial


def kept_folders(trial: Any) -> list[str]:
    return [folder.name for folder in trial_folder(trial).glob("checkpoint_*")]


def continues_from_the_newest(root: Location) -> None:
    """The snapshot (after epoch 3) names checkpoint_000002, which the keep policy deleted when epoch
    4 was registered; epoch 2 scored best; the driver died after epoch 5; checkpoint_000005 was never
    processed."""
    trial = restored_trial(root, [-math.inf, 10.0, -math.inf, -math.inf, -math.inf], snapshot_after=3)
    assert trial.checkpoint.path.endswith("checkpoint_000002") and kept_folders(trial) == [
        "checkpoint_000001",
        "checkpoint_000004",
        "checkpoint_000005",
    ]
    continue_from_newest(trial)
    latest = trial.latest_checkpoint_result
    assert latest.checkpoint.path == f"{trial.path}/checkpoint_000004"
    assert latest.metrics["training_iteration"] == 5  # Ray's restore continues the iteration count
    assert trial.storage.current_checkpoint_index == 4  # the next checkpoint is checkpoint_000005, fresh
    assert kept_folders(trial) == ["checkpoint_000001", "checkpoint_000004"]  # best + latest, as Ray keeps
    best = trial.run_metadata.checkpoint_manager.best_checkpoint_result
    assert best.checkpoint.path.endswith("checkpoint_000001")


def write_snapshot(folder: Location, session: str, trials: dict[str, str], counter: int, live: set[str]) -> Location:
    """An experiment state listing ``trials`` (id -> status) and a searcher state that counted ``counter``."""
    entries = [[json.dumps({"trial_id": t, "status": status}), "{}"] for t, status in trials.items()]
    (folder / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": entries}))
    limiter = {"max_concurrent": 2, "live_trials": live, "num_unfinished_live_trials": len(live)}
    generator = {"counter": counter, "total_samples": 4, "finished": False, "name:ConcurrencyLimiter": limiter}
    path = folder / f"search_gen_state-{session}.json"
    path.write_bytes(cloudpickle.dumps(generator))
    (folder / f"searcher-state-{session}.pkl").write_bytes(b"study")
    return path


def reconciles_the_newest_searcher_state(folder: Location) -> None:
    """Two sessions' snapshots; the newest searcher counted a trial its trial list lacks."""
    write_snapshot(folder, "2026-01-01_00-00-00", {"a": "RUNNING"}, counter=1, live={"a"})
    newest = write_snapshot(
        folder, "2026-01-01_00-00-09", {"a": "TERMINATED", "b": "PENDING"}, counter=3, live={"b", "lost"}
    )
    assert snapshot.reconcile(folder)
    state = cloudpickle.loads(newest.read_bytes())
    assert state["counter"] == 2 and state["total_samples"] == 4
    assert state["name:ConcurrencyLimiter"]["live_trials"] == {"b"}
    assert state["name:ConcurrencyLimiter"]["num_unfinished_live_trials"] == 1
