"""The cluster recipe of docs/cluster.md with real ``ray start`` processes: a head and a second
node on this machine with token authentication on, and ``python -m runner.search ... --address``
joining them without ``RAY_AUTH_MODE`` set (Ray 2.60 alone would answer InvalidAuthToken).

The token is the test's own file (``RAY_AUTH_TOKEN_PATH``), never ``~/.ray/auth_token``; the nodes
use their own temp dir and ports, and are stopped by their process ids (``ray start --block``
shuts its node down on SIGTERM), never by a global ``ray stop``: other Ray clusters may be running.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import write_tiny_search

REPO = Path(__file__).resolve().parents[3]
READY = "Ray runtime started."  # printed by `ray start` once its node is up
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """One node (``ray start --block``) on loopback, every port of its own; waits until it is up."""
    ports = [
        f"--{name}={free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    ]
    command = ["ray", "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *ports, *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while READY not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"ray start {args[0]} failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def token_cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(address, environment holding only the token's location) of a head + worker cluster."""
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"RAY_AUTH_TOKEN_PATH": str(token)}
    node_env = env | {"RAY_AUTH_MODE": "token"}  # as docs/cluster.md has nodes started
    temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    nodes: list[subprocess.Popen] = []
    try:
        head_args = ["--head", f"--port={port}", "--num-cpus=1"]
        common = ["--object-store-memory=100000000", f"--temp-dir={temp_dir}"]
        head_args += ["--include-dashboard=false", *common]
        nodes.append(ray_start(head_args, node_env, tmp_path / "head.log"))
        worker_args = [f"--address=127.0.0.1:{port}", "--num-cpus=1", *common]
        nodes.append(ray_start(worker_args, node_env, tmp_path / "worker.log"))
        yield f"127.0.0.1:{port}", env
    finally:
        for proc in reversed(nodes):
            stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_search_joins_a_ray_start_cluster_by_address_with_its_token(token_cluster, tmp_path):
    address, env = token_cluster
    path = write_tiny_search(tmp_path, "ray-start", {"gpu": 0, "cpu": 1}, trials=2, epochs=2)
    command = [sys.executable, "-m", "runner.search", str(path), "--address", address]
    command += ["--storage-path", str(tmp_path / "ray_results")]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "InvalidAuthToken" not in proc.stderr

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("ray-start").experiment_id
    runs = client.search_runs([exp_id], "tags.`runner.role` = 'trial'")
    assert len(runs) == 2 and all(r.data.tags["runner.status"] == "finished" for r in runs)
    assert len({r.data.tags["runner.ray_node_id"] for r in runs}) == 2  # one CPU per node: a trial on each
