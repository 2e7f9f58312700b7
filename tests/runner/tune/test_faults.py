"""Faults with real processes: a trial worker SIGKILLed, the driver SIGKILLed at several moments
(and while Ray copies a snapshot) then ``--resume``, the tracking store lost mid-search, and a trial
whose loss becomes NaN. Nothing is lost, nothing is left RUNNING, no crash fails a trial, and a
diverged trial runs once.

The searches run the real training loop on a 24-video synthetic dataset with a 16-channel model (an
epoch takes a fraction of a second), on one Ray started for the module; the killing and the reading
back are tests.killed_search's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from pyarrow.fs import LocalFileSystem

from localization.data.synthetic import generate
from runner import search
from runner.searchfile.space import make_sampler, sample_configs
from runner.searchfile.spec import load_search_file
from runner.tune.restore import continue_from_newest
from runner.tune.storage import Location
from runner.tune.trial import diverged
from tests.killed_search import (
    Driver,
    assert_epochs_logged_once,
    assert_one_finished_run_per_trial,
    children,
    reported_epochs,
    trial_workers,
)
from tests.mlflow_server_process import free_port, start_server, stop_server
from tests.restore_cases import continues_from_the_newest, kept_folders, restored_trial

EPOCHS = 20  # long enough to kill a trial in the middle, short enough for CI (~0.3 s per epoch)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("faults-data"), seed=0, videos=24).parent


def search_file(root: Path, data: Path, experiment: str, **search_options: object) -> Path:
    raw = yaml.safe_load((data / "config.yaml").read_text())
    raw["model"].update(embd_dim=16, fpn_dim=16, head_dim=16)
    raw["train"].update(epochs=EPOCHS, warmup_epochs=0, batch_size=4, eval_every=10, ema_decay=0.9)
    raw.update(
        experiment=experiment,
        resources={"cpu": 1, "gpu": 0},
        tracking={"uri": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"},
        search={
            "num_samples": 1,
            "max_concurrent": 2,
            "sampler": "random",
            "max_failures": 2,
            "scheduler": {"type": "fifo"},
            "space": {"train.lr": {"loguniform": [1.0e-3, 3.0e-3]}},
            **search_options,
        },
    )
    path = root / "search.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_killed_trial_worker_is_retried_from_its_checkpoint_into_the_same_run(ray_cluster, data, tmp_path):
    path = search_file(tmp_path, data, "worker-kill")
    storage = tmp_path / "ray_results"
    killed: list[tuple[int, int]] = []  # (pid, epochs reported when killed)

    def kill_mid_trial() -> None:
        deadline = time.monotonic() + 600  # generous: a loaded 2-core machine starts trials slowly
        while time.monotonic() < deadline:
            epochs = [e for per_trial in reported_epochs(storage).values() for e in per_trial]
            workers = trial_workers(os.getpid())  # the module's Ray runs below this process
            if len(epochs) >= 3 and workers:
                os.kill(workers[0], signal.SIGKILL)
                killed.append((workers[0], len(epochs)))
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_mid_trial, daemon=True)
    killer.start()
    outcome = search.run(path, storage_path=storage, echo=lambda _: None)
    killer.join()
    assert killed, "no trial worker was found to kill"
    assert outcome.status == "finished"

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    runs = children(client, "worker-kill")
    assert len(runs) == 1  # the retried trial kept its run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["runner.status"] == "finished"
    assert run.data.tags["runner.retries"] == "1"
    assert "actor" in run.data.tags["runner.last_error"].lower()  # Ray's "the actor died ..." reason
    assert_epochs_logged_once(client, run.info.run_id, EPOCHS)
    # Tune saw every epoch once: the retry continued after the last checkpoint, it did not restart
    (epochs,) = reported_epochs(storage).values()
    assert epochs == list(range(1, EPOCHS + 1)) and killed[0][1] >= 3


def checkpoint_folders(storage: Path) -> set[Path]:
    return set(storage.glob("*/trial_*/checkpoint_*"))


def test_driver_killed_at_three_moments_then_resume_fails_no_trial(ray_cluster, data, tmp_path, monkeypatch):
    """Killed before the first checkpoint, right after a checkpoint (the moment Ray's keep policy
    deletes the folder its last snapshot may name), and during an evaluation; resumed each time."""
    path = search_file(tmp_path, data, "driver-kill", num_samples=2)
    raw = yaml.safe_load(path.read_text())
    raw["train"].update(epochs=8, eval_every=4)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    storage = tmp_path / "ray_results"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")

    def trials_running_without_checkpoint() -> bool:  # a snapshot exists, so --resume can restore
        return (
            any(storage.glob("*/experiment_state-*.json"))
            and (tmp_path / "mlflow" / "mlflow.db").exists()
            and bool(children(client, "driver-kill"))  # a trial started (the second may start later)
            and not checkpoint_folders(storage)
        )

    first = Driver(path)
    first.kill_when(trials_running_without_checkpoint)
    assert not any(reported_epochs(storage).values())  # no epoch reached Tune: killed before any checkpoint
    before = {r.data.tags["runner.trial_id"]: r.info.run_id for r in children(client, "driver-kill")}
    assert {r.info.status for r in children(client, "driver-kill")} == {"RUNNING"}  # a crash closes nothing

    seen: set[Path] = set()

    def checkpoint_deleted() -> bool:  # Ray registered a newer checkpoint and deleted the older one
        folders = checkpoint_folders(storage)
        gone = seen - folders
        seen.update(folders)
        return bool(gone)

    second = Driver(path, "--resume")
    second.kill_when(checkpoint_deleted)

    third = Driver(path, "--resume")
    third.kill_when(lambda: re.search(r"evaluating on \d+ videos", third.worker_log()) is not None)

    monkeypatch.chdir(tmp_path)
    outcome = search.run(path, resume=True, echo=lambda _: None)
    assert outcome.status == "finished"
    runs = children(client, "driver-kill")
    assert "FAILED" not in {r.info.status for r in runs}
    assert_one_finished_run_per_trial(client, "driver-kill", before, epochs=8)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["runner.status"] == "finished"


def test_a_snapshot_copied_in_parts_loses_no_trial_on_resume(ray_cluster, data, tmp_path, monkeypatch):
    """The driver dies while Ray copies a snapshot: storage holds the searcher's state after it
    created the second trial, but an experiment state from before (the copies are one file after
    another). The resumed searcher must create the missing trial again, not count it as done."""
    path = search_file(tmp_path, data, "torn-snapshot", num_samples=2)
    storage = tmp_path / "ray_results"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    driver = Driver(path)
    driver.kill_when(lambda: len(reported_epochs(storage)) == 2 and len(children(client, "torn-snapshot")) == 2)
    (state,) = [max(storage.glob("*/experiment_state-*.json"))]
    snapshot = json.loads(state.read_text())
    lost = json.loads(snapshot["trial_data"][1][0])["trial_id"]
    snapshot["trial_data"] = snapshot["trial_data"][:1]  # as copied before the second trial existed
    state.write_text(json.dumps(snapshot))

    monkeypatch.chdir(tmp_path)
    outcome = search.run(path, resume=True, echo=lambda _: None)
    assert outcome.status == "finished"
    runs = children(client, "torn-snapshot")
    assert len(runs) == 2 and lost not in {r.data.tags["runner.trial_id"] for r in runs}  # redone, new id
    for run in runs:
        assert run.info.status == "FINISHED"
        assert_epochs_logged_once(client, run.info.run_id, EPOCHS)


def test_nan_loss_fails_the_trial_once_with_its_reason_and_the_search_goes_on(ray_cluster, data, tmp_path):
    """A searched feature folder whose copy is all NaN: that trial diverges at its first step, runs
    once although ``search.max_failures`` would allow 2 retries, and ends FAILED with its reason."""
    nan_dir = tmp_path / "i3d_nan"
    shutil.copytree(data / "features" / "i3d", nan_dir)
    for file in nan_dir.glob("*.npy"):
        np.save(file, np.full_like(np.load(file), np.nan))
    good_dir = str(data / "features" / "i3d")
    options = {
        "num_samples": 2,
        "max_failures": 2,
        "space": {"data.streams.i3d.dir": {"choice": [good_dir, str(nan_dir)]}},
    }
    for seed in range(50):  # a seed whose two trials take different folders
        path = search_file(tmp_path, data, "nan", seed=seed, **options)
        dirs = [
            v["data.streams.i3d.dir"]
            for v in sample_configs(load_search_file(path).space, make_sampler("random", seed), 2)
        ]
        if len(set(dirs)) == 2:
            break
    raw = yaml.safe_load(path.read_text())
    raw["train"].update(epochs=3, eval_every=1)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    outcome = search.run(path, storage_path=tmp_path / "ray_results", echo=lambda _: None)
    assert outcome.status == "finished" and outcome.best is not None  # the search went on

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    by_dir = {r.data.params["data.streams.i3d.dir"]: r for r in children(client, "nan")}
    failed, good = by_dir[str(nan_dir)], by_dir[good_dir]
    assert failed.info.status == "FAILED" and failed.data.tags["runner.status"] == "failed"
    assert "TrainingDiverged" in failed.data.tags["runner.failure"]
    assert "loss became nan at epoch 1, step 1" in failed.data.tags["runner.failure"]
    assert good.info.status == "FINISHED" and good.data.tags["runner.status"] == "finished"
    assert outcome.best.run_id == good.info.run_id
    # Run once: Tune got one report from it (the divergence), it never errored, it was never retried
    nan_trial = Path(failed.data.tags["runner.trial_dir"])
    results = [json.loads(line) for line in (nan_trial / "result.json").read_text().splitlines()]
    assert len(results) == 1 and diverged(results[0]) == failed.data.tags["runner.failure"]
    assert not (nan_trial / "error.txt").exists() and "runner.retries" not in failed.data.tags

    from ray.tune.search.optuna import OptunaSearch  # the sampler's own record of the two trials

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(outcome.ray_path))
    states = sorted(t.state.name for t in searcher._ot_study.trials)
    assert states == ["COMPLETE", "FAIL"]


def test_tracking_store_lost_mid_search_then_resume_completes_the_record(ray_cluster, data, tmp_path, monkeypatch):
    server_root = tmp_path / "server"
    server_root.mkdir()
    port = free_port()
    uri, backend = f"http://127.0.0.1:{port}", f"sqlite:///{server_root / 'db.sqlite'}"
    path = search_file(tmp_path, data, "store-lost", num_samples=2)
    raw = yaml.safe_load(path.read_text())
    raw["tracking"] = {"uri": uri}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not minutes of retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    client = MlflowClient(uri)

    server = start_server(backend, server_root / "artifacts", port)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner.search", str(path)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # a trial's 3rd epoch is recorded
            if any(len(client.get_metric_history(r.info.run_id, "loss")) >= 3 for r in children(client, "store-lost")):
                break
            time.sleep(0.3)
        before = {r.data.tags["runner.trial_id"]: r.info.run_id for r in children(client, "store-lost")}
        stop_server(server)
        _, err = proc.communicate(timeout=120)
    finally:
        stop_server(server)
    assert proc.returncode == 3, err
    assert f"error: tracking store {uri} failed" in err  # said at once, with the reason ...
    assert f"error: search stopped: tracking store {uri} failed" in err and "--resume" in err  # ... and how on
    assert "Traceback" not in err
    storage = tmp_path / "ray_results"
    assert all(epochs and epochs == sorted(set(epochs)) for epochs in reported_epochs(storage).values())
    assert list(storage.glob("*/trial_*/checkpoint_*"))  # checkpoints kept for the resume

    server = start_server(backend, server_root / "artifacts", port)  # the store is back
    try:
        outcome = search.run(path, resume=True, echo=lambda _: None)
        assert outcome.status == "finished"
        # epochs logged during the outage were back-filled from Ray's results
        assert_one_finished_run_per_trial(client, "store-lost", before, EPOCHS)
    finally:
        stop_server(server)


def local(path: Path) -> Location:
    return Location(LocalFileSystem(), str(path))


def test_a_restored_trial_whose_snapshot_checkpoint_was_deleted_continues_from_the_newest(tmp_path):
    continues_from_the_newest(local(tmp_path))


def test_a_restored_trial_whose_snapshot_names_its_newest_checkpoint_is_left_as_ray_restored_it(tmp_path):
    trial = restored_trial(local(tmp_path / "a"), [1.0, 2.0], snapshot_after=2)
    manager = trial.run_metadata.checkpoint_manager
    continue_from_newest(trial)
    assert trial.run_metadata.checkpoint_manager is manager and trial.checkpoint.path.endswith("checkpoint_000001")
    assert kept_folders(trial) == ["checkpoint_000001"]  # only the never-processed folder went

    nothing = restored_trial(local(tmp_path / "b"), [], snapshot_after=0)  # killed before its first report
    continue_from_newest(nothing)
    assert nothing.checkpoint is None and nothing.storage.current_checkpoint_index == -1
    assert kept_folders(nothing) == []
