"""Ctrl-C then ``--resume``: the same MLflow runs continue, one per trial, nothing left RUNNING,
and the Optuna study Ray restores holds every trial once, COMPLETE with its whole curve.

The interrupted search runs in a subprocess (SIGINT would stop pytest itself); the resume runs
in this process against the same embedded MLflow store and Ray storage path.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from localization.data.synthetic import generate
from runner import search
from runner.tune.searcher import load_saved_search
from tests.conftest import TINY_MODEL, synthetic_data_section

NUM_TRIALS, EPOCHS = 3, 10


def tiny_search(data: Path) -> dict:
    return {
        "experiment": "resume",
        "data": synthetic_data_section(data),
        "model": TINY_MODEL,
        "train": {"epochs": EPOCHS, "warmup_epochs": 0, "batch_size": 4, "lr": 1.0e-3, "eval_every": 5},
        "search": {
            "num_samples": NUM_TRIALS,
            "max_concurrent": 2,
            "seed": 0,
            "scheduler": {"type": "fifo"},
            "space": {"train.lr": {"loguniform": [5.0e-4, 3.0e-3]}},
        },
        "resources": {"cpu": 1},
    }


def children(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("resume")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return [r for r in runs if r.data.tags.get("runner.role") == "trial"]


def test_interrupted_search_resumes_into_the_same_runs(ray_cluster, tmp_path, monkeypatch):
    data = tmp_path / "data"
    generate(data, seed=0, videos=12)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_search(data)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")

    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.search", str(path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait for a trial's 2nd epoch
        if (tmp_path / "mlflow" / "mlflow.db").exists() and any(
            len(client.get_metric_history(r.info.run_id, "loss")) >= 2 for r in children(client)
        ):
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "--resume" in out.splitlines()[-1]
    before = {r.data.tags["runner.trial_id"]: r for r in children(client)}
    assert before and all(r.info.status != "RUNNING" for r in before.values())
    assert "interrupted" in {r.data.tags["runner.status"] for r in before.values()}

    outcome = search.run(path, resume=True, echo=lambda _: None)
    assert outcome.status == "finished"
    after = children(client)
    assert len(after) == NUM_TRIALS
    assert len({r.data.tags["runner.trial_id"] for r in after}) == NUM_TRIALS
    for run in after:
        assert run.info.status == "FINISHED" and run.data.tags["runner.status"] == "finished"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1))  # continued, no epoch logged twice
        evaluated = sorted(m.step for m in client.get_metric_history(run.info.run_id, "average_mAP"))
        assert evaluated == list(range(5, EPOCHS + 1, 5))  # validation metrics only when evaluated
        if run.data.tags["runner.trial_id"] in before:  # the run that was interrupted is continued
            assert run.info.run_id == before[run.data.tags["runner.trial_id"]].info.run_id
    saved = load_saved_search(outcome.ray_path)
    trials = {t.number: t for t in saved.study.get_trials()}
    assert len(trials) == NUM_TRIALS
    for run in after:  # FIFO: every trial ran to the end, so every trial is COMPLETE with its best
        trial = trials[saved.trial_numbers[run.data.tags["runner.trial_id"]]]
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "average_mAP")}
        assert trial.state == TrialState.COMPLETE
        assert trial.intermediate_values == pytest.approx(history)  # epochs before the interrupt too
        assert trial.value == pytest.approx(max(history.values()))
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["runner.status"] == "finished"
    assert (
        len([r for r in client.search_runs([parent.info.experiment_id]) if r.data.tags.get("runner.role") == "search"])
        == 1
    )
