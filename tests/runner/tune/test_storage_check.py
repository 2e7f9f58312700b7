"""The storage check before trials start, on a real two-node ``ray start`` cluster whose second node
does not see the storage path: that node runs in a mount namespace of its own with an empty tmpfs
over the folder (a share that is not mounted there). The search is refused with one line naming the
node and the path, exit 2, before any MLflow run exists. (The passing case, every node reaching the
folder, is tests/runner/tune/test_ray_start.py's search.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import write_tiny_search
from tests.ray_start_process import two_node_cluster

HIDE = 'mount -t tmpfs none "$0" && exec "$@"'  # sh -c HIDE FOLDER COMMAND...: COMMAND sees FOLDER empty

REPO = Path(__file__).resolve().parents[3]


def mount_namespace() -> tuple[str, ...] | None:
    """``unshare`` options giving a process its own mounts (as root, or in a user namespace), if any work."""
    for options in (("--mount",), ("--map-root-user", "--mount")):
        probe = ["unshare", *options, "--propagation", "private", "sh", "-c", "mount -t tmpfs none /mnt"]
        try:
            if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                return (*options, "--propagation", "private")
        except (OSError, subprocess.TimeoutExpired):
            return None
    return None


def test_a_storage_path_a_node_cannot_reach_is_refused_before_any_run(tmp_path: Path) -> None:
    options = mount_namespace()
    if options is None:
        pytest.skip("unshare cannot give a process its own mounts here (needs root or user namespaces)")
    storage = tmp_path / "shared" / "ray_results"
    storage.mkdir(parents=True)
    hide = ("unshare", *options, "sh", "-c", HIDE, str(storage))
    path = write_tiny_search(tmp_path, "unreachable", {"gpu": 0, "cpu": 1}, trials=2, epochs=2)
    with two_node_cluster(tmp_path, worker_wrapper=hide) as (address, env):
        command = [sys.executable, "-m", "runner.search", str(path), "--address", address]
        proc = subprocess.run(
            [*command, "--storage-path", str(storage)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(  # the path, the node (its address and id), what it found
        rf"error: --storage-path {re.escape(str(storage))}: node \S+ \([0-9a-f]{{12}}\) cannot reach it: "
        rf"{re.escape(str(storage))}/\.storage-check-\w+/driver does not exist there",
        error,
    ), error
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("unreachable")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []  # no run created
    assert not list(storage.rglob(".storage-check-*")) and not list(storage.rglob("trial_*"))  # no marker, no trial
