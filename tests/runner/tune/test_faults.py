"""Faults with real processes (issues 6 and 10): a trial worker SIGKILLed, the driver SIGKILLed at
several moments then ``--resume``, and a trial whose loss becomes NaN. Nothing is lost, nothing
is left RUNNING, no crash fails a trial, and a diverged trial runs once.

The searches run the real training loop on a 24-video synthetic dataset with a 16-channel model (an
epoch takes a fraction of a second), on one Ray started for the module. Processes are found and
killed only below this test's own process tree: other Ray users on the machine are left alone.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from runner.tune.trial import SCORE_KEY, diverged
from runner.tune.trial_results import trial_folder
from tests.mlflow_server_process import free_port, start_server, stop_server

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


def children(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return [
        r
        for r in client.search_runs([found.experiment_id], max_results=100)
        if r.data.tags.get("runner.role") == "trial"
    ]


def reported_epochs(storage: Path) -> dict[str, list[int]]:
    """Epochs each trial reported to Tune, in order (Ray's result.json, one line per report)."""
    out = {}
    for result in storage.glob("*/trial_*/result.json"):
        lines = result.read_text().splitlines()
        out[result.parent.name] = [json.loads(line)["epoch"] for line in lines if line.strip()]
    return out


def descendants(root: int) -> set[int]:
    """Process ids below ``root`` (its children, theirs, ...): processes this test started."""
    listing = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children = defaultdict(list)
    for line in listing.splitlines():
        pid, ppid = map(int, line.split())
        children[ppid].append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children[todo.pop()]:
            found.add(child)
            todo.append(child)
    return found


def trial_workers(root: int) -> list[int]:
    """Ray trial actors (function trainables run in ``ray::ImplicitFunc``) below ``root``."""
    mine = descendants(root)
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(maxsplit=1) for line in listing.splitlines()]
    return [int(row[0]) for row in rows if int(row[0]) in mine and "ray::ImplicitFunc" in row[-1]]


def assert_epochs_logged_once(client: MlflowClient, run_id: str, epochs: int = EPOCHS) -> None:
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == list(range(1, epochs + 1))


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
    assert_epochs_logged_once(client, run.info.run_id)
    # Tune saw every epoch once: the retry continued after the last checkpoint, it did not restart
    (epochs,) = reported_epochs(storage).values()
    assert epochs == list(range(1, EPOCHS + 1)) and killed[0][1] >= 3


def assert_one_finished_run_per_trial(
    client: MlflowClient, experiment: str, before: dict[str, str], epochs: int = EPOCHS
) -> None:
    """After a resume: one FINISHED run per trial (2 trials), every epoch logged once, and the
    runs that existed before the fault kept their ids."""
    after = children(client, experiment)
    assert len(after) == 2 and len({r.data.tags["runner.trial_id"] for r in after}) == 2
    for run in after:
        assert run.info.status == "FINISHED" and run.data.tags["runner.status"] == "finished"
        assert_epochs_logged_once(client, run.info.run_id, epochs)
        if run.data.tags["runner.trial_id"] in before:
            assert run.info.run_id == before[run.data.tags["runner.trial_id"]]


class Driver:
    """``python -m runner.search`` as a subprocess of this test, on its own Ray.

    ``RAY_TMPDIR`` is a fresh short folder per launch (Unix socket paths are limited to 107
    characters), so the trial workers' logs of this launch are found there and nowhere else, and
    the code under test is the checkout's (``PYTHONPATH``), whatever is installed.
    """

    def __init__(self, path: Path, *args: str) -> None:
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="rk"))
        repo = str(Path(__file__).resolve().parents[3])
        env = {**os.environ, "RAY_TMPDIR": str(self.ray_tmp), "PYTHONPATH": repo}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner.search", str(path), *args],
            cwd=path.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    def worker_log(self) -> str:
        """What this launch's trial workers printed so far (Ray removes the logs of exited idle
        workers: a file listed a moment ago may be gone when it is read)."""
        text = []
        for log in self.ray_tmp.glob("ray/session_*/logs/worker-*.out"):
            with contextlib.suppress(FileNotFoundError):
                text.append(log.read_text(errors="replace"))
        return "".join(text)

    def kill_when(self, moment: Callable[[], bool], timeout_s: float = 600) -> None:
        """SIGKILL the driver once ``moment()`` holds, then wait until its trial workers have exited
        (Ray's GCS and raylet die with the driver, the workers with them; two idle Ray agents linger
        for a minute or two."""
        deadline = time.monotonic() + timeout_s
        while not moment():
            assert self.proc.poll() is None, "the search ended before the moment to kill it"
            assert time.monotonic() < deadline, "the moment to kill the driver never came"
            time.sleep(0.05)
        started = set(trial_workers(self.proc.pid))
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 120
        while (started := {pid for pid in started if _alive(pid)}) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not started, f"trial workers {started} outlived their driver by 2 minutes"
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Running, not a zombie (field 3 of /proc/PID/stat is the state)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
        assert_epochs_logged_once(client, run.info.run_id)


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
        assert_one_finished_run_per_trial(client, "store-lost", before)
    finally:
        stop_server(server)


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


def local(path: Path) -> Location:
    return Location(LocalFileSystem(), str(path))


def test_a_restored_trial_whose_snapshot_checkpoint_was_deleted_continues_from_the_newest(tmp_path):
    continues_from_the_newest(local(tmp_path))


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
