"""Honest multi-fidelity and a budget-sized TPE, checked on the Optuna study Ray saves with a real
search (local Ray, real Optuna, SQLite MLflow, the real training loop on synthetic data):

- a trial ASHA stopped is PRUNED with its per-epoch intermediate values, a full-length one is
  COMPLETE with its best value, a failed one is FAIL;
- the seed configs run first, then exactly ``search.startup_trials`` random trials, then TPE;
- ``search.repeat_top`` re-trains the best finished configs with other seeds, promotion ranks by
  the mean, and the parent run holds the importance of the searched keys.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from localization.data.synthetic import generate
from runner import promote, search
from runner.searchfile.spec import load_search_file
from runner.tune import cluster
from runner.tune.searcher import load_saved_search
from tests.conftest import TINY_MODEL, synthetic_data_section

NUM_TRIALS, EPOCHS, STARTUP = 5, 3, 2
SEED_LR = 2.0e-3
BROKEN_SUBSET = "nosuchsubset"  # a seed config with it fails when the trial loads its data


def search_file(data_dir) -> dict:
    return {
        "experiment": "fidelity",
        "data": synthetic_data_section(data_dir),
        "model": TINY_MODEL,
        "train": {"epochs": EPOCHS, "warmup_epochs": 0, "batch_size": 4, "lr": 1.0e-3, "eval_every": 1},
        "search": {
            # the training loss is measured every epoch and never ties: ASHA surely stops some trials
            "metric": "loss",
            "mode": "min",
            "num_samples": NUM_TRIALS,
            "max_concurrent": 1,  # sequential: which trials are start-up trials is then exact
            "seed": 3,
            "startup_trials": STARTUP,
            "max_failures": 0,
            "seed_configs": [{"train.lr": SEED_LR}, {"data.val_subset": BROKEN_SUBSET}],
            "repeat_top": {"k": 2, "seeds": 1},
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "space": {
                "train.lr": {"loguniform": [2.0e-4, 5.0e-3]},
                "data.val_subset": {"choice": ["validation", BROKEN_SUBSET]},
            },
        },
        "resources": {"cpu": 1},
    }


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    generate(root / "data", seed=0, videos=12)
    path = root / "fidelity.yaml"
    path.write_text(yaml.safe_dump(search_file(root / "data"), sort_keys=False))  # space order matters
    info = cluster.start(num_cpus=2, object_store_bytes=256 * 1024**2)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(root)
            patch.delenv("MLFLOW_TRACKING_URI", raising=False)
            lines: list[str] = []
            outcome = search.run(path, echo=lines.append)
    finally:
        cluster.stop(info)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fidelity")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id], max_results=100)
        if r.data.tags.get("runner.role") == "trial"
    ]
    return {"outcome": outcome, "client": client, "runs": runs, "spec": load_search_file(path), "out": "\n".join(lines)}


def test_study_states_follow_how_each_trial_ended(searched):
    saved = load_saved_search(searched["outcome"].ray_path)
    assert saved is not None
    trials = {t.number: t for t in saved.study.get_trials()}
    client = searched["client"]
    ended = {"finished": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    seen = {s: 0 for s in ended}
    searched_runs = [r for r in searched["runs"] if "runner.repeat_of" not in r.data.tags]
    assert len(searched_runs) == NUM_TRIALS == len(trials)
    for run in searched_runs:
        status = run.data.tags["runner.status"]
        trial = trials[saved.trial_numbers[run.data.tags["runner.trial_id"]]]
        assert trial.state == ended[status], (status, trial)
        seen[status] += 1
        losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
        if status == "failed":
            assert trial.value is None
            continue
        # the MLflow history and Optuna's intermediate values are the same measurements
        assert trial.intermediate_values == pytest.approx(losses)
        if status == "finished":
            assert max(losses) == EPOCHS
            assert trial.value == pytest.approx(min(losses.values()))  # its best, not its last
        else:
            assert max(losses) < EPOCHS  # stopped by ASHA before its last epoch
    assert seen["pruned"] >= 1 and seen["finished"] >= 1 and seen["failed"] >= 1, seen


def test_seed_configs_first_then_startup_random_then_tpe(searched):
    spec = searched["spec"]
    study = load_saved_search(searched["outcome"].ray_path).study
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert trials[0].params == {"train.lr": SEED_LR, "data.val_subset": "validation"}
    assert trials[1].params["data.val_subset"] == BROKEN_SUBSET and trials[1].params["train.lr"] == 1.0e-3
    # TPE samples at random until STARTUP trials ended COMPLETE or PRUNED (FAIL does not count);
    # its random stream is RandomSampler(seed)'s, so the random trials are that sampler's proposals.
    random_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec.search.seed))
    ended = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials[:2])
    checked_tpe = False
    for trial in trials[2:]:
        proposal = random_study.ask()
        spec.space(proposal)
        if ended < STARTUP:
            assert trial.params == proposal.params  # a start-up trial
        else:
            assert not math.isclose(trial.params["train.lr"], proposal.params["train.lr"])  # TPE's own pick
            checked_tpe = True
            break
        ended += trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert checked_tpe, "the search ended before TPE took over"


def test_repeats_retrain_the_best_finished_configs_and_promotion_ranks_by_mean(searched):
    runs = {r.data.tags["runner.trial_id"]: r for r in searched["runs"]}
    repeats = [r for r in runs.values() if "runner.repeat_of" in r.data.tags]
    own = [r for r in runs.values() if "runner.repeat_of" not in r.data.tags]
    finished = sorted(
        (r for r in own if r.data.tags["runner.status"] == "finished"), key=lambda r: r.data.metrics["best_loss"]
    )
    assert finished
    assert sorted(r.data.tags["runner.repeat_of"] for r in repeats) == sorted(
        r.data.tags["runner.trial_id"] for r in finished[:2]
    )
    groups = {}
    for repeat in repeats:
        original = runs[repeat.data.tags["runner.repeat_of"]]
        assert repeat.data.tags["runner.status"] == "finished"
        assert int(repeat.data.params["train.seed"]) == int(original.data.params["train.seed"]) + 1
        assert repeat.data.params["train.lr"] == original.data.params["train.lr"]
        groups[original.info.run_id] = (original.data.metrics["best_loss"] + repeat.data.metrics["best_loss"]) / 2
    spec, client = searched["spec"], searched["client"]
    record = promote.find_search(client, spec, searched["outcome"].parent_run_id)
    assert promote.best_child(record).info.run_id == min(groups, key=groups.get)
    assert record.parent.data.tags["runner.best_run_id"] == min(groups, key=groups.get)  # the summary agrees

    parent_id = searched["outcome"].parent_run_id
    local = Path(client.download_artifacts(parent_id, "leaderboard.csv"))
    table = pd.read_csv(local)
    for run_id, mean in groups.items():
        assert table.loc[table.run_id == run_id, "mean_loss"].item() == pytest.approx(mean)


def test_parent_run_holds_the_importance_of_the_searched_keys(searched):
    study = load_saved_search(searched["outcome"].ray_path).study
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    client, parent_id = searched["client"], searched["outcome"].parent_run_id
    artifacts = {a.path for a in client.list_artifacts(parent_id, "importance")}
    if len(complete) < 2:
        assert not artifacts and "what mattered: fewer than 2 finished trials" in searched["out"]
        return
    assert artifacts == {"importance/param_importance.json", "importance/param_importance.png"}
    data = json.loads(Path(client.download_artifacts(parent_id, "importance/param_importance.json")).read_text())
    assert data["trials"] == len(complete)
    assert set(data["importances"]) <= set(searched["spec"].space.keys)
    assert sum(data["importances"].values()) == pytest.approx(1.0, abs=0.01)
    assert f"over {len(complete)} finished trials" in searched["out"]
