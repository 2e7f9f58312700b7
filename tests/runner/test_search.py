"""End to end: a tiny real search (local Ray, SQLite MLflow, the real training loop on synthetic data)
and the MLflow layout contract it must leave behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from localization.config.loading import flatten
from localization.data.synthetic import generate
from localization.model.weights import INFERENCE_KEYS
from runner import search
from runner.names import REPORT_FILE
from runner.searchfile.space import make_sampler, sample_configs
from runner.searchfile.spec import load_search_file
from runner.tune import cluster
from runner.tune.trial import SCORE_KEY
from runner.tune.trial_results import reported_results
from tests.conftest import synthetic_data_section

BEST_LINE = re.compile(r"^best validation mAP: (\S+) \(trial (\S+), MLflow run (\w+)\)$", re.M)
NUM_TRIALS, EPOCHS = 3, 2
BROKEN_SUBSET = "nosuchsubset"  # a searched value that makes a trial fail when it loads its data


def search_file(data: Path, seed: int) -> dict:
    return {
        "experiment": "e2e",
        "data": synthetic_data_section(data),
        "model": {
            "embd_dim": 32,
            "fpn_dim": 32,
            "head_dim": 32,
            "n_head": 4,
            "n_mha_win_size": 9,
            "backbone_arch": [2, 1, 3],
            "regression_range": [[0, 4], [4, 8], [8, 16], [16, 10000]],
        },
        "train": {
            "epochs": EPOCHS,
            "warmup_epochs": 0,
            "batch_size": 4,
            "lr": 1.0e-3,
            "ema_decay": 0.9,
            "eval_every": 1,
        },
        "search": {
            "num_samples": NUM_TRIALS,
            "max_concurrent": 2,
            "seed": seed,
            "max_failures": 0,
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "space": {
                "data.features": {"choice": [["i3d"], ["i3d", "slowfast"]]},
                "train.lr": {"loguniform": [5.0e-4, 3.0e-3]},
                "test.nms_sigma": {"uniform": [0.3, 0.9]},
                "data.val_subset": {"choice": ["validation", BROKEN_SUBSET]},
            },
        },
        "resources": {"cpu": 1, "gpu": 1},
    }


def seed_with_one_failure(data: Path, tmp: Path) -> int:
    """A sampler seed whose opening trials include exactly one broken config (the others train)."""
    for seed in range(100):
        path = tmp / "probe.yaml"
        path.write_text(yaml.safe_dump(search_file(data, seed)))
        spec = load_search_file(path)
        opening = sample_configs(spec.space, make_sampler("tpe", seed), NUM_TRIALS)
        if sum(v["data.val_subset"] == BROKEN_SUBSET for v in opening) == 1:
            return seed
    raise AssertionError("no seed gives one failing trial")


@pytest.fixture(scope="module")
def ray_cluster():
    info = cluster.start(num_cpus=2, object_store_bytes=256 * 1024**2)
    yield info
    cluster.stop(info)


@pytest.fixture(scope="module")
def finished_search(ray_cluster, tmp_path_factory):
    """Run the tiny search once (cwd = a fresh folder, so the embedded MLflow store is used)."""
    root = tmp_path_factory.mktemp("search")
    data = root / "data"
    generate(data, seed=0, videos=16)
    seed = seed_with_one_failure(data, root)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(search_file(data, seed)))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        lines: list[str] = []
        outcome = search.run(path, echo=lines.append)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return {
        "root": root,
        "outcome": outcome,
        "out": "\n".join(lines),
        "client": client,
        "experiment": experiment,
        "runs": runs,
        "spec": load_search_file(path),
    }


def parent_and_children(result: dict) -> tuple:
    parents = [r for r in result["runs"] if r.data.tags.get("runner.role") == "search"]
    children = [r for r in result["runs"] if r.data.tags.get("runner.role") == "trial"]
    return parents, children


def test_search_completes_and_prints_the_stored_best(finished_search):
    outcome, out = finished_search["outcome"], finished_search["out"]
    assert outcome.status == "finished"
    match = BEST_LINE.search(out)
    assert match, out
    value, trial_id, run_id = float(match.group(1)), match.group(2), match.group(3)
    best_run = finished_search["client"].get_run(run_id)
    assert best_run.data.metrics["best_average_mAP"] == value
    assert best_run.data.tags["runner.trial_id"] == trial_id
    parents, children = parent_and_children(finished_search)
    assert parents[0].data.tags["runner.best_run_id"] == run_id
    assert parents[0].data.metrics["best_average_mAP"] == value
    finished = [c.data.metrics["best_average_mAP"] for c in children if "best_average_mAP" in c.data.metrics]
    assert value == max(finished)
    assert "| rank | trial | status |" in out  # the leaderboard


def test_one_parent_one_child_per_trial_none_running(finished_search):
    parents, children = parent_and_children(finished_search)
    assert len(parents) == 1 and len(children) == NUM_TRIALS
    assert len({c.data.tags["runner.trial_id"] for c in children}) == NUM_TRIALS
    assert all(r.info.status != "RUNNING" for r in finished_search["runs"])
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["runner.status"] == "finished"
    for tag in (
        "runner.search_file",
        "runner.ray_experiment_path",
        "runner.searcher",
        "runner.metric",
        "runner.mode",
        "runner.num_samples",
        "runner.best_trial_id",
    ):
        assert parent.data.tags.get(tag), tag
    assert Path(parent.data.tags["runner.ray_experiment_path"]).is_dir()
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    artifacts = {a.path for a in finished_search["client"].list_artifacts(parent.info.run_id)}
    assert {"search_space", "leaderboard.csv", "leaderboard.md", "plots"} <= artifacts
    plots = finished_search["client"].list_artifacts(parent.info.run_id, "plots")
    assert "plots/metric_by_trial.png" in {p.path for p in plots}
    assert {"plots/param_train.lr.png", "plots/param_data.features.png"} <= {p.path for p in plots}
    location = finished_search["experiment"].artifact_location
    assert location == (finished_search["root"] / "mlflow" / "artifacts" / "e2e").as_uri()


def test_trials_ran_the_configs_the_seeded_sampler_proposes(finished_search):
    """--dry-run shows the search's opening configs: the same sampler, asked in the same order."""
    spec = finished_search["spec"]
    opening = sample_configs(spec.space, make_sampler("tpe", spec.search.seed), NUM_TRIALS)
    _, children = parent_and_children(finished_search)
    ran = sorted(float(c.data.params["train.lr"]) for c in children)
    assert ran == sorted(v["train.lr"] for v in opening)


def test_statuses_tell_finished_pruned_and_failed_apart(finished_search):
    _, children = parent_and_children(finished_search)
    client = finished_search["client"]
    for child in children:
        status = child.data.tags["runner.status"]
        broken = child.data.params["data.val_subset"] == BROKEN_SUBSET
        if broken:
            assert status == "failed" and child.info.status == "FAILED"
            assert "no video has subset" in child.data.tags["runner.failure"]
            continue
        epochs = max(m.step for m in client.get_metric_history(child.info.run_id, "loss"))
        assert status == ("finished" if epochs == EPOCHS else "pruned")
        assert child.info.status == "FINISHED"
    assert sum(c.data.tags["runner.status"] == "failed" for c in children) == 1


def test_child_runs_hold_params_metric_history_and_best_checkpoint(finished_search, tmp_path):
    _, children = parent_and_children(finished_search)
    client, spec = finished_search["client"], finished_search["spec"]
    trained = [c for c in children if c.data.tags["runner.status"] != "failed"]
    assert trained
    for child in trained:
        params = child.data.params
        assert set(flatten(spec.base)) <= set(params)  # every resolved config value
        searched = child.data.tags["runner.searched_keys"].split(",")
        assert set(searched) == set(spec.space.keys)
        assert float(params["train.lr"]) != spec.base.train.lr
        run_id = child.info.run_id
        losses = client.get_metric_history(run_id, "loss")
        steps = sorted(m.step for m in losses)
        assert steps == list(range(1, len(steps) + 1))  # one value per epoch, no duplicates
        for key in ("average_mAP", "mAP_0.50", "mAP_0.75", "mAP_0.95", "lr", "cls_loss", "reg_loss"):
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == steps, key
        best = max(client.get_metric_history(run_id, "average_mAP"), key=lambda m: (m.value, m.step))
        assert child.data.metrics["best_average_mAP"] == best.value
        assert child.data.tags["runner.best_epoch"] == str(best.step)
        local = Path(client.download_artifacts(run_id, "", str(tmp_path / run_id)))
        ckpt = torch.load(local / "checkpoints/best/checkpoint.pt", weights_only=True)
        assert ckpt["epoch"] == best.step
        assert ckpt["config"]["train"]["lr"] == float(params["train.lr"])
        assert params["train.num_threads"] == str(ckpt["config"]["train"]["num_threads"]) == "1"  # 1 CPU
        assert (
            yaml.safe_load((local / "checkpoints/best/config.yaml").read_text())["train"]["lr"]
            == ckpt["config"]["train"]["lr"]
        )
        predictions = json.loads((local / "predictions/validation_best.json").read_text())
        assert predictions["results"]


def test_ray_keeps_best_and_latest_checkpoint_per_trial(finished_search):
    ray_path = finished_search["outcome"].ray_path
    for trial_dir in ray_path.glob("trial_*"):
        kept = {json.loads((d / REPORT_FILE).read_text())["epoch"] for d in trial_dir.glob("checkpoint_*")}
        results = reported_results(trial_dir)
        if not results:  # failed before its first report
            assert kept == set()
            continue
        latest = max(r["epoch"] for r in results)
        best = max(results, key=lambda r: (r[SCORE_KEY], r["epoch"]))["epoch"]  # ties: the later epoch
        assert kept == {best, latest}


def test_mlflow_keeps_the_model_weights_and_finished_trials_keep_no_weights_in_ray(finished_search, tmp_path):
    """Disk: no optimizer state in MLflow; a finished trial's Ray copies hold only its results."""
    client = finished_search["client"]
    _, children = parent_and_children(finished_search)
    done = [c for c in children if c.data.tags["runner.status"] in ("finished", "pruned")]
    assert done
    for child in done:
        local = Path(client.download_artifacts(child.info.run_id, "checkpoints/best/checkpoint.pt", str(tmp_path)))
        assert set(torch.load(local, weights_only=True)) == set(INFERENCE_KEYS)  # no optimizer, scheduler, RNG
        kept = list(Path(child.data.tags["runner.trial_dir"]).glob("checkpoint_*"))
        assert kept and all({p.name for p in d.iterdir()} == {"report.json", "config.yaml"} for d in kept)


def test_experiment_is_model_training_and_trials_name_their_data(finished_search):
    """What MLflow 3's UI reads: the experiment kind, and a dataset input per trial."""
    assert finished_search["experiment"].tags["mlflow.experimentKind"] == "custom_model_development"
    _, children = parent_and_children(finished_search)
    digests = {}
    for child in children:
        (given,) = child.inputs.dataset_inputs
        features = json.loads(child.data.params["data.features"])
        assert given.dataset.name == f"data[{'+'.join(features)}]"
        assert json.loads(given.dataset.profile)["features"] == features
        assert {t.key: t.value for t in given.tags} == {"mlflow.data.context": "training"}
        digests.setdefault(given.dataset.name, set()).add(given.dataset.digest)
    assert all(len(d) == 1 for d in digests.values())  # the same data, the same digest
