"""Run the driver-kill scenario N times: does any crash ever cost a trial?

``python benchmarks/resume_stress.py --runs 20 --burner-runs 10 [--out DIR]`` runs
``tests/runner/tune/test_faults.py::test_driver_killed_at_three_moments_then_resume_fails_no_trial`` (the driver
SIGKILLed before the first checkpoint, right after a checkpoint and during an evaluation, resumed
each time; no trial may end FAILED) as a fresh pytest process per run. ``--burner-runs K`` runs a
CPU burner beside K of the runs (every other run first): one busy process per CPU at the
niceness of Ray's workers, so the search competes for the cores and the kill moments shift.
Each run keeps its folder under ``--out`` (Ray's ``error.txt`` of any failed trial is printed);
the last line is the figure.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEST = "tests/runner/tune/test_faults.py::test_driver_killed_at_three_moments_then_resume_fails_no_trial"
REPO = Path(__file__).resolve().parents[1]


# Ray runs its trial workers at niceness 15; a burner at 0 would leave them ~4% of a core (one
# such run took 1,202 s, eight times a quiet one), at 15 it takes half the cores from them.
BURNER_NICENESS = 15


def _burn() -> None:
    os.nice(BURNER_NICENESS)
    while True:
        pass


@contextmanager
def burner(on: bool) -> Iterator[None]:
    """One busy-looping process per CPU while the block runs (none when ``on`` is false)."""
    procs = [multiprocessing.Process(target=_burn, daemon=True) for _ in range((os.cpu_count() or 1) if on else 0)]
    for proc in procs:
        proc.start()
    try:
        yield
    finally:
        for proc in procs:  # only the burners this script started
            proc.kill()
            proc.join()


def run_once(folder: Path) -> tuple[str, float]:
    """One pytest run of the scenario in ``folder``; (pass | FAIL | setup error, seconds).

    "setup error": the test's own Ray did not start (Ray 2.60 gives its raylet a fixed 30 s to
    register, which an overloaded machine can miss), so the scenario never ran.
    """
    started = time.perf_counter()
    # Ray's files (and its "current cluster" pointer) in a fresh short folder: never another Ray's
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": tempfile.mkdtemp(prefix="rs")}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={folder}", TEST]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    (folder.parent / f"{folder.name}.log").write_text(done.stdout + done.stderr)
    verdict = "pass" if done.returncode == 0 else "setup error" if "ERROR at setup" in done.stdout else "FAIL"
    return verdict, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--burner-runs", type=int, default=0, help="how many runs get a CPU burner beside them")
    parser.add_argument("--out", type=Path, help="keep each run's folder here (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="resume-stress-"))
    out.mkdir(parents=True, exist_ok=True)
    verdicts: list[str] = []
    burned = 0
    for index in range(1, args.runs + 1):
        loaded = burned < args.burner_runs and (index % 2 == 1 or args.runs - index < args.burner_runs - burned)
        burned += loaded
        with burner(loaded):
            verdict, seconds = run_once(out / f"run-{index:02d}")
        verdicts.append(verdict)
        note = " (burner)" if loaded else ""
        print(f"run {index:>2}/{args.runs}: {verdict} in {seconds:.0f} s{note}")
        if verdict == "FAIL":
            for error in (out / f"run-{index:02d}").rglob("error.txt"):
                print(f"  {error}:\n{error.read_text()}")
        sys.stdout.flush()
    ran = len(verdicts) - verdicts.count("setup error")
    print(
        f"{verdicts.count('pass')} of {ran} runs passed ({burned} of {args.runs} with a CPU burner beside them; "
        f"{verdicts.count('setup error')} did not start their Ray); folders in {out}"
    )
    return 0 if verdicts.count("pass") == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
