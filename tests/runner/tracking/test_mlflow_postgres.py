"""Scale: a tiny search against a real ``mlflow server`` whose backend store is PostgreSQL
(Debian's package on 127.0.0.1, set up by ``.ci/run``), as a shared multi-node set-up would use.

``RUNNER_TEST_POSTGRES`` is an SQLAlchemy URL of a role that may create databases (``.ci/run`` sets
it, and then a missing server fails the test). Without it the test uses the ``.ci/run`` role on
127.0.0.1 where PostgreSQL is installed, and skips, saying why, where it is not.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner import search
from tests.mlflow_server_process import free_port, start_server, stop_server
from tests.promotable_search import write_promotable_search

CI_URL = "postgresql+psycopg2://mlflow:mlflow@127.0.0.1:5432/postgres"


def admin_url() -> str:
    """The URL to create the test database with; skips where PostgreSQL cannot be had."""
    required = os.environ.get("RUNNER_TEST_POSTGRES")
    if required:
        return required
    if shutil.which("psql") is None or shutil.which("pg_ctlcluster") is None:
        pytest.skip("PostgreSQL is not installed (no psql / pg_ctlcluster); .ci/run installs and starts it")
    try:
        import psycopg2
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary; .ci/run does)")
    try:
        psycopg2.connect(CI_URL.replace("+psycopg2", ""), connect_timeout=5).close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL role mlflow on 127.0.0.1:5432 (.ci/run creates it): {str(exc).strip()[:120]}")
    return CI_URL


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database for this test, dropped afterwards; yields its SQLAlchemy URL."""
    import psycopg2

    admin = admin_url()
    name = f"runner_test_{uuid.uuid4().hex[:8]}"
    connection = psycopg2.connect(admin.replace("+psycopg2", ""), connect_timeout=10)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield admin.rpartition("/")[0] + f"/{name}"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.close()


def test_search_recorded_in_a_postgres_backed_mlflow_server(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg2

    port = free_port()
    server = start_server(database, tmp_path / "artifacts", port)
    try:
        monkeypatch.chdir(tmp_path)
        uri = f"http://127.0.0.1:{port}"
        search_file = write_promotable_search(tmp_path, uri, "postgres-e2e", "af-postgres")
        outcome = search.run(search_file, storage_path=tmp_path / "ray_results", echo=lambda _: None)
        assert outcome.status == "finished"
        assert not (tmp_path / "mlflow").exists()  # nothing fell back to the embedded store

        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("postgres-e2e").experiment_id])
        parents = [r for r in runs if r.data.tags["runner.role"] == "search"]
        children = [r for r in runs if r.data.tags["runner.role"] == "trial"]
        assert len(parents) == 1 and len(children) == 2
        parent = parents[0]
        assert parent.info.status == "FINISHED" and parent.data.tags["runner.status"] == "finished"
        assert parent.data.tags["runner.best_run_id"] in {c.info.run_id for c in children}
        for child in children:
            assert child.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == parent.info.run_id
            history = client.get_metric_history(child.info.run_id, "average_mAP")
            assert sorted(m.step for m in history) == [1, 2]
            files = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoints/best")}
            assert {"checkpoints/best/checkpoint.pt", "checkpoints/best/config.yaml"} <= files
    finally:
        stop_server(server)

    # the record lives in PostgreSQL itself
    connection = psycopg2.connect(database.replace("+psycopg2", ""), connect_timeout=10)
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT status, count(*) FROM runs GROUP BY status")
        assert dict(cursor.fetchall()) == {"FINISHED": 3}
    finally:
        connection.close()
