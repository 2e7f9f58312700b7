"""Searches whose Ray storage is a bucket (``--storage-path s3://...``) on a real S3-compatible server
on 127.0.0.1 (moto's server mode, started and stopped here), with MLflow's artifacts proxied to the
same bucket: the search's checkpoints land in the bucket, its trials in MLflow; promotion and the
final evaluation work from the bucket through MLflow alone; a driver killed mid-search resumes from
the URI with no trial lost or run twice; the restore fix (runner.tune.restore) repairs a trial whose
folder is in the bucket, and the snapshot fix (runner.tune.snapshot) works there too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from localization.api import exit_status
from runner import evaluate, promote, search
from runner.tune.storage import Location
from tests.conftest import write_tiny_search
from tests.killed_search import Driver, assert_one_finished_run_per_trial, children
from tests.mlflow_server_process import free_port, start_server, stop_server
from tests.promotable_search import write_promotable_search
from tests.restore_cases import continues_from_the_newest, reconciles_the_newest_searcher_state
from tests.s3_server_process import CREDENTIALS, keys, s3_filesystem, start_s3, stop_s3

BUCKET = "searches"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's HOST:PORT, its bucket created; the credentials in this process's environment
    (inherited by the Ray this module's searches start, and by their drivers)."""
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    port = free_port()
    process = start_s3(port, log)
    endpoint = f"127.0.0.1:{port}"
    try:
        s3_filesystem(endpoint).create_dir(BUCKET)
        yield endpoint
    finally:
        stop_s3(process)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def storage_uri(endpoint: str, prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}?endpoint_override={endpoint}&scheme=http"


def test_search_to_a_bucket_then_promotion_and_evaluation_from_mlflow_artifacts_on_it(s3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://{s3}")  # the tracking server's, not the clients'
    port = free_port()
    server = start_server(f"sqlite:///{tmp_path / 'db.sqlite'}", f"s3://{BUCKET}/mlflow", port, tmp_path / "mlflow.log")
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL")
    uri = f"http://127.0.0.1:{port}"
    try:
        search_file = write_promotable_search(tmp_path, uri, "s3-search", "af-s3")
        lines: list[str] = []
        outcome = search.run(search_file, storage_path=storage_uri(s3, "ray"), echo=lines.append)
        assert outcome.status == "finished", lines
        assert any(line.startswith(f"storage: s3://{BUCKET}/ray?") for line in lines)  # checked before trials
        fs = s3_filesystem(s3)
        stored = keys(fs, f"{BUCKET}/ray/{outcome.ray_path.name}")
        assert any("/experiment_state-" in key for key in stored)
        assert not (tmp_path / "s3:").exists() and not (tmp_path / "ray_results").exists()  # nothing local
        client = MlflowClient(uri)
        trials = [r for r in client.search_runs([client.get_experiment_by_name("s3-search").experiment_id])]
        trials = [r for r in trials if r.data.tags.get("runner.role") == "trial"]
        assert len(trials) == 2 and {r.data.tags["runner.status"] for r in trials} == {"finished"}
        for run in trials:  # each trial's folder and its kept checkpoints are in the bucket
            folder = run.data.tags["runner.trial_dir"].removeprefix("s3://")
            assert folder.startswith(f"{BUCKET}/ray/{outcome.ray_path.name}/trial_")
            assert any(key.startswith(f"{folder}/checkpoint_") and key.endswith("/report.json") for key in stored)
            best = f"{BUCKET}/mlflow/{run.info.experiment_id}/{run.info.run_id}/artifacts/checkpoints/best/"
            assert f"{best}checkpoint.pt" in keys(fs, best)  # MLflow's copy, in the bucket too

        for name in CREDENTIALS:  # promotion and evaluation need MLflow only
            monkeypatch.delenv(name)
        assert exit_status(promote.main, [str(search_file)]) == 0
        out = tmp_path / "eval"
        assert exit_status(evaluate.main, ["models:/af-s3@champion", "--out", str(out), "--tracking-uri", uri]) == 0
        assert (out / "metrics.json").is_file()
        evaluation = client.search_runs([trials[0].info.experiment_id], "tags.`runner.role` = 'evaluation'")[0]
        prefix = f"{BUCKET}/mlflow/{evaluation.info.experiment_id}/{evaluation.info.run_id}/artifacts/"
        assert f"{prefix}metrics.json" in keys(fs, prefix)
    finally:
        stop_server(server)


def test_a_driver_killed_mid_search_resumes_from_the_bucket(s3, tmp_path, monkeypatch):
    epochs = 10  # an epoch takes a fraction of a second: the kill must come before both trials end
    path = write_tiny_search(tmp_path, "s3-resume", {"cpu": 1, "gpu": 0}, trials=2, epochs=epochs)
    storage = storage_uri(s3, "resume")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    fs = s3_filesystem(s3)

    def trained_and_snapshotted() -> bool:  # Ray's snapshot is in the bucket and a trial has checkpoints there
        time.sleep(0.25)  # a few listings a second: the search keeps the CPUs
        stored = keys(fs, f"{BUCKET}/resume")
        return (
            any("/experiment_state-" in key for key in stored)
            and any("/checkpoint_" in key and key.endswith("report.json") for key in stored)
            and (tmp_path / "mlflow" / "mlflow.db").exists()
            and len(children(client, "s3-resume")) == 2
        )

    Driver(path, "--storage-path", storage).kill_when(trained_and_snapshotted, timeout_s=300)
    before = {r.data.tags["runner.trial_id"]: r.info.run_id for r in children(client, "s3-resume")}
    assert {r.data.tags["runner.status"] for r in children(client, "s3-resume")} == {"running"}  # killed mid-way

    monkeypatch.chdir(tmp_path)
    outcome = search.run(path, resume=True, storage_path=storage, echo=lambda _: None)
    assert outcome.status == "finished"
    assert outcome.ray_path.uri.startswith(f"s3://{BUCKET}/resume/s3-resume-")
    assert_one_finished_run_per_trial(client, "s3-resume", before, epochs=epochs)  # none lost, none twice
    assert not Path(tmp_path / "s3:").exists()


def test_the_restore_fix_on_a_bucket(s3):
    """runner.tune.restore repairs a restored trial whose folder is in the bucket, as on a local disk."""
    continues_from_the_newest(Location(s3_filesystem(s3), f"{BUCKET}/restore-fix"))


def test_the_snapshot_reconcile_on_a_bucket(s3):
    """runner.tune.snapshot makes a snapshot's parts agree in the bucket, as on a local disk."""
    reconciles_the_newest_searcher_state(Location(s3_filesystem(s3), f"{BUCKET}/snapshot"))
