"""The cluster recipe of docs/cluster.md with real ``ray start`` processes: a head and a second
node on this machine with token authentication on, and ``python -m runner.search ... --address``
joining them without ``RAY_AUTH_MODE`` set (Ray 2.60 alone would answer InvalidAuthToken).

The token is the test's own file (``RAY_AUTH_TOKEN_PATH``), never ``~/.ray/auth_token``; the nodes
are tests.ray_start_process's.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import write_tiny_search
from tests.ray_start_process import two_node_cluster

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def token_cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(address, environment holding only the token's location) of a head + worker cluster."""
    with two_node_cluster(tmp_path) as started:
        yield started


def test_search_joins_a_ray_start_cluster_by_address_with_its_token(token_cluster, tmp_path):
    address, env = token_cluster
    path = write_tiny_search(tmp_path, "ray-start", {"gpu": 0, "cpu": 1}, trials=2, epochs=2)
    command = [sys.executable, "-m", "runner.search", str(path), "--address", address]
    command += ["--storage-path", str(tmp_path / "ray_results")]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "InvalidAuthToken" not in proc.stderr
    assert f"storage: {tmp_path / 'ray_results'}, read and written from 2 node(s)" in proc.stdout  # checked first

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("ray-start").experiment_id
    runs = client.search_runs([exp_id], "tags.`runner.role` = 'trial'")
    assert len(runs) == 2 and all(r.data.tags["runner.status"] == "finished" for r in runs)
    assert len({r.data.tags["runner.ray_node_id"] for r in runs}) == 2  # one CPU per node: a trial on each
