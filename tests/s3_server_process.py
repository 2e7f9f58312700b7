"""A real S3-compatible server on 127.0.0.1 for the object-storage tests: moto's server mode (the
dev extra), started and stopped by the tests, with the dummy credentials it accepts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs

READY_TIMEOUT_S = 60
# What a client of the server needs in its environment (pyarrow, boto3 and Ray's workers read them)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def start_s3(port: int, log: Path) -> subprocess.Popen:
    """``python -m moto.server`` on 127.0.0.1:port in its own process group; returns once it answers."""
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                return process
        except OSError:
            time.sleep(0.2)
    stop_s3(process)
    raise RuntimeError(f"moto server did not start (exit status {process.returncode}) {log.read_text()[-2000:]}")


def stop_s3(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def s3_filesystem(endpoint: str) -> pafs.S3FileSystem:
    """pyarrow's client of the server at ``endpoint`` (HOST:PORT), plain HTTP, credentials as given."""
    return pafs.S3FileSystem(
        access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region=CREDENTIALS["AWS_DEFAULT_REGION"],
        endpoint_override=endpoint,
        scheme="http",
        allow_bucket_creation=True,
    )


def keys(fs: pafs.FileSystem, prefix: str) -> list[str]:
    """Every object under ``prefix`` (bucket/...), sorted."""
    selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    return sorted(info.path for info in fs.get_file_info(selector) if info.type == pafs.FileType.File)
