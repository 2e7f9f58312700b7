"""Faults with real processes (issue 6): a trial worker SIGKILLed, the driver SIGKILLed then
``--resume``, and a trial whose loss becomes NaN. Nothing is lost, nothing is left RUNNING.

The searches run the real engine on a 24-video synthetic dataset with a 16-channel model (an
epoch takes a fraction of a second), on one Ray started for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from localization.data.synthetic import generate
from runner import cluster, search
from runner.names import REPORT_FILE
from runner.space import make_sampler, sample_configs
from runner.spec import load_search_file
from runner.trial import latest_checkpoint

EPOCHS = 20  # long enough to kill a trial in the middle, short enough for CI (~0.3 s per epoch)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("faults-data"), seed=0, videos=24).parent


@pytest.fixture(scope="module")
def ray_cluster():
    info = cluster.start(num_cpus=2, object_store_bytes=256 * 1024**2)
    yield info
    cluster.stop(info)


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


def trial_workers() -> list[int]:
    """Process ids of Ray trial actors (function trainables run in ``ray::ImplicitFunc``)."""
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if "ray::ImplicitFunc" in line]


def assert_epochs_logged_once(client: MlflowClient, run_id: str) -> None:
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == list(range(1, EPOCHS + 1))


def test_killed_trial_worker_is_retried_from_its_checkpoint_into_the_same_run(ray_cluster, data, tmp_path):
    path = search_file(tmp_path, data, "worker-kill")
    storage = tmp_path / "ray_results"
    killed: list[tuple[int, int]] = []  # (pid, epochs reported when killed)

    def kill_mid_trial() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            epochs = [e for per_trial in reported_epochs(storage).values() for e in per_trial]
            workers = trial_workers()
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


def assert_one_finished_run_per_trial(client: MlflowClient, experiment: str, before: dict[str, str]) -> None:
    """After a resume: one FINISHED run per trial (2 trials), every epoch logged once, and the
    runs that existed before the fault kept their ids."""
    after = children(client, experiment)
    assert len(after) == 2 and len({r.data.tags["runner.trial_id"] for r in after}) == 2
    for run in after:
        assert run.info.status == "FINISHED" and run.data.tags["runner.status"] == "finished"
        assert_epochs_logged_once(client, run.info.run_id)
        if run.data.tags["runner.trial_id"] in before:
            assert run.info.run_id == before[run.data.tags["runner.trial_id"]]


def test_driver_killed_then_resume_completes_one_run_per_trial(ray_cluster, data, tmp_path, monkeypatch):
    path = search_file(tmp_path, data, "driver-kill", num_samples=2)
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.search", str(path)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # a trial's 3rd epoch is in MLflow
        if (tmp_path / "mlflow" / "mlflow.db").exists() and any(
            len(client.get_metric_history(r.info.run_id, "loss")) >= 3 for r in children(client, "driver-kill")
        ):
            break
        time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = {r.data.tags["runner.trial_id"]: r.info.run_id for r in children(client, "driver-kill")}
    assert before and proc.returncode == -signal.SIGKILL
    assert "RUNNING" in {r.info.status for r in children(client, "driver-kill")}  # a crash closes nothing

    outcome = search.run(path, resume=True, echo=lambda _: None)
    assert outcome.status == "finished"
    assert_one_finished_run_per_trial(client, "driver-kill", before)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["runner.status"] == "finished"


def test_nan_loss_fails_the_trial_with_its_reason_and_the_search_goes_on(ray_cluster, data, tmp_path):
    """A searched feature folder whose copy is all NaN: that trial diverges at its first step."""
    nan_dir = tmp_path / "i3d_nan"
    shutil.copytree(data / "features" / "i3d", nan_dir)
    for file in nan_dir.glob("*.npy"):
        np.save(file, np.full_like(np.load(file), np.nan))
    good_dir = str(data / "features" / "i3d")
    options = {
        "num_samples": 2,
        "max_failures": 1,
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

    from ray.tune.search.optuna import OptunaSearch  # the sampler's own record of the two trials

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(outcome.ray_path))
    states = sorted(t.state.name for t in searcher._ot_study.trials)
    assert states == ["COMPLETE", "FAIL"]


def start_server(backend: str, artifacts: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:port over ``backend``, light (no job runner, 1 worker)."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.25)
    stop_server(process)
    raise RuntimeError("mlflow server did not start")


def stop_server(process: subprocess.Popen) -> None:
    """SIGKILL the server's process group (uvicorn included): the store vanishes mid-request."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_tracking_store_lost_mid_search_then_resume_completes_the_record(ray_cluster, data, tmp_path, monkeypatch):
    server_root = tmp_path / "server"
    server_root.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
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


def test_a_resumed_trial_whose_snapshot_checkpoint_was_deleted_continues_from_the_newest(tmp_path):
    """After a driver crash Ray's (stale) snapshot can name a checkpoint its keep-policy deleted."""
    for epoch in (1, 4, 3):
        folder = tmp_path / f"checkpoint_{epoch:06d}"
        folder.mkdir()
        (folder / REPORT_FILE).write_text(json.dumps({"epoch": epoch}))
    assert latest_checkpoint(tmp_path / "checkpoint_000003") == tmp_path / "checkpoint_000003"
    assert latest_checkpoint(tmp_path / "checkpoint_000002") == tmp_path / "checkpoint_000004"
    assert latest_checkpoint(tmp_path / "elsewhere" / "checkpoint_000002") is None  # nothing kept: from scratch
