"""A real ``mlflow server`` on 127.0.0.1 for the tests that need one: start it, wait for it, kill it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

READY_TIMEOUT_S = 90


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(backend: str, artifacts: Path | str, port: int, log: Path | None = None) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:port over ``backend``, light (no job runner, 1 worker), in its
    own process group; returns once ``/health`` answers. Its output goes to ``log`` (if given),
    whose tail is in the error when the server does not come up."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend]
    command += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port)]
    with open(log or os.devnull, "w") as output:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [*command, "--workers", "1"], stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.25)
    stop_server(process)
    tail = log.read_text()[-2000:] if log else ""
    raise RuntimeError(f"mlflow server did not start (exit status {process.returncode}) {tail}")


def stop_server(process: subprocess.Popen) -> None:
    """SIGKILL the server's process group (uvicorn included): the store vanishes mid-request."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
