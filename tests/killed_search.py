"""A search killed on purpose, and what it left, for the fault tests (runner.tune's test_faults and
test_object_storage): ``python -m runner.search`` as a subprocess on its own Ray (:class:`Driver`),
the Ray trial workers below a process, each trial's reported epochs, and the MLflow runs that must
come out of a resume (one FINISHED run per trial, every epoch logged once).

Processes are found and killed only below the test's own process tree: other Ray users on the
machine are left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from mlflow.tracking import MlflowClient


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


def assert_epochs_logged_once(client: MlflowClient, run_id: str, epochs: int) -> None:
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == list(range(1, epochs + 1))


def assert_one_finished_run_per_trial(
    client: MlflowClient, experiment: str, before: dict[str, str], epochs: int
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
