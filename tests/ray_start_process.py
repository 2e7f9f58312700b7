"""Real ``ray start`` nodes on this machine for the tests: a head and a second node with token
authentication (the cluster recipe of docs/cluster.md), on loopback with their own temp dir and
ports, stopped by their process ids (``ray start --block`` shuts its node down on SIGTERM), never
by a global ``ray stop``: other Ray clusters may be running."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.mlflow_server_process import free_port

READY = "Ray runtime started."  # printed by `ray start` once its node is up
START_TIMEOUT_S = 120


def ray_start(args: list[str], env: dict[str, str], log: Path, wrapper: tuple[str, ...] = ()) -> subprocess.Popen:
    """One node (``ray start --block``, run by ``wrapper`` if given) on loopback, every port of its own;
    waits until it is up."""
    ports = [
        f"--{name}={free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    ]
    command = [
        *wrapper,
        "ray",
        "start",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
        *ports,
        *args,
    ]
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


@contextlib.contextmanager
def two_node_cluster(tmp_path: Path, worker_wrapper: tuple[str, ...] = ()) -> Iterator[tuple[str, dict[str, str]]]:
    """A head and a worker node with token authentication, the worker's ``ray start`` run by
    ``worker_wrapper``; (address, environment holding only the token's location)."""
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
        nodes.append(ray_start(worker_args, node_env, tmp_path / "worker.log", worker_wrapper))
        yield f"127.0.0.1:{port}", env
    finally:
        for proc in reversed(nodes):
            stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
