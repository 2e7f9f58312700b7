"""What a person sees of a search: one line per trial event, a progress line, the leaderboard and
where to look; Ray's tables and the trials' output in a log file; no escape sequence and no native
crash trace anywhere (a real ``python -m runner.search`` with a local Ray and ASHA stopping trials)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import write_tiny_search

REPO = Path(__file__).resolve().parents[2]
ESCAPE = "\x1b"


def test_a_search_prints_its_events_and_logs_the_rest(tmp_path: Path) -> None:
    # loss, minimised: it differs between learning rates from the first epoch, so ASHA stops some
    path = write_tiny_search(
        tmp_path,
        "console",
        {"gpu": 0, "cpu": 1},
        trials=4,
        epochs=4,
        max_concurrent=2,
        metric="loss",
        mode="min",
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    raw = yaml.safe_load(path.read_text())
    raw["search"]["space"] = {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}
    path.write_text(yaml.safe_dump(raw))
    run = subprocess.run(
        [sys.executable, "-m", "runner.search", str(path), "--storage-path", str(tmp_path / "ray_results")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    console = run.stdout + run.stderr
    assert run.returncode == 0, console[-3000:]
    lines = console.splitlines()
    assert ESCAPE not in console and "Fatal Python error" not in console, console
    assert sum(" started: train.lr=" in line for line in lines) == 4
    assert any(re.fullmatch(r"trial \w+ stopped by ASHA after epoch \d \(best loss .+ at epoch \d\)", x) for x in lines)
    assert any(re.fullmatch(r"trial \w+ finished: best loss .+ at epoch \d", line) for line in lines)
    assert lines.count(next(x for x in lines if x.startswith("progress: 4/4 trials"))) == 1
    assert any(line.startswith("best validation loss: ") for line in lines)
    assert any("/#/experiments/" in line and "/runs" in line for line in lines)
    assert "Trial status" not in console and "(run_trial pid=" not in console  # Ray's own output: in the log

    log = Path(
        next(x for x in lines if x.startswith("Ray's tables and the trials' output: ")).split(": ")[1].split()[0]
    )
    text = log.read_text()
    assert "(run_trial pid=" in text and "Trial status" in text  # the workers' lines and Tune's tables
    assert ESCAPE not in text and "Fatal Python error" not in text
    assert len(lines) < 60  # 4 trials: started, evaluations, ends, progress, leaderboard, summary


GUARDED_THREAD = """
import contextlib, threading, time, torch
from runner.tune.trial import WorkerExit
torch.set_num_threads(1)
guard = WorkerExit()
def train():
    with guard.training() if {guarded} else contextlib.nullcontext(lambda: False) as exiting:
        x, started = torch.randn(128, 128), time.monotonic()
        while not exiting() and time.monotonic() - started < float("{train_s}"):
            x = torch.tanh(x @ x)
    started = time.monotonic()
    while time.monotonic() - started < {cleanup_s}:  # a trial's clean-up after its loop frees tensors too
        x = torch.tanh(x @ x)
threading.Thread(target=train, daemon=True).start()  # as Ray Tune runs a function trainable
time.sleep(0.3)
"""


def run_thread(guarded: bool, train_s: float = math.inf, cleanup_s: float = 0.0) -> subprocess.CompletedProcess:
    code = GUARDED_THREAD.format(guarded=guarded, train_s=train_s, cleanup_s=cleanup_s)
    return subprocess.run([sys.executable, "-c", code], capture_output=True)


def test_a_worker_exiting_mid_operation_ends_its_training_thread_first() -> None:
    """The cause of the crash trace at the end of a good search, and its fix: a daemon thread still
    inside a torch operation at interpreter exit aborts the process; the guard stops it first."""
    assert run_thread(guarded=False).returncode != 0  # std::terminate: aborted
    guarded = run_thread(guarded=True)
    assert guarded.returncode == 0, guarded.stderr.decode()[-2000:]


def test_the_worker_waits_for_a_thread_that_left_its_training_loop_before_the_exit() -> None:
    """A stopped trial leaves its loop, then closes its reporter and monitor while the worker
    exits: the guard waits for the thread's end, not for the end of its loop."""
    finished = run_thread(guarded=True, train_s=0.1, cleanup_s=1.0)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
